"""Self-supervised training of Φ on unlabeled target images (Sec. 3.2; docs/method.md, steps 1-10).

    train_selfsup -c training/selfsup_lm_lite.yaml --set init.checkpoint=runs/synthetic/model.pt [--resume]

Each step takes a batch of unlabeled real crops (boxes jittered) and a batch of labelled synthetic
crops, and runs :class:`pose6d_ros.training.selfsup_step.SelfSupStep`: Φ -> differentiable PnP ->
soft renderer -> silhouette masking -> Φ on the masked real and rendered crops -> Eq. 1-3.
Φ starts from a synthetic-trained checkpoint with early layers frozen for
``init.freeze_early_steps`` steps, then all layers train. A small labelled diagnostic split is
evaluated every ``eval.period`` steps (logged only; never a loss).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from pose6d_ros.data.augment import occlusion_masks
from pose6d_ros.geometry.pnp import solve_pnp
from pose6d_ros.registry import RunObjects
from pose6d_ros.rendering.mesh import pack_objects
from pose6d_ros.rendering.renderer import RenderSettings, render
from pose6d_ros.training import distributed as du
from pose6d_ros.training import supervised
from pose6d_ros.training.bn_adapt import adapt_batchnorm
from pose6d_ros.training.build import SyntheticSource
from pose6d_ros.training.config import Recipe, RenderSection, SelfSupSection, as_recipe, check_required
from pose6d_ros.training.perceptual import build_perceptual
from pose6d_ros.training.runner import Run, cli_main
from pose6d_ros.training.selfsup_step import SelfSupStep
from pose6d_ros.training.trainer import EMATeacher, StepSampler

__all__ = ["build_renderer", "build_step", "train", "main"]

log = logging.getLogger("pose6d_ros.training")


def build_renderer(objects: RunObjects, render_cfg: RenderSection, device: torch.device):
    """``render_fn`` over the run's meshes (model-row order), composited over black
    (``selfsup.render``: meshes decimated above ``max_faces``, soft edge ``sigma``, ``backend``)."""
    batch = pack_objects([objects.registry.get(oid) for oid in objects.ids], device=device,
                         max_faces=render_cfg.max_faces)
    settings = RenderSettings(sigma=render_cfg.sigma, background=(0.0, 0.0, 0.0), backend=render_cfg.backend)

    def render_fn(object_index, R, t, K, size):
        return render(batch, object_index, R, t, K, (size, size), settings)

    return render_fn


def build_step(settings: SelfSupSection, objects: RunObjects, model: torch.nn.Module,
               device: torch.device) -> SelfSupStep:
    """The step of the ``selfsup`` section: its switches and weights, the renderer of
    ``selfsup.render``, the features of ``selfsup.perceptual``, the patches of
    ``selfsup.occlusion_patches``."""
    occ_cfg = settings.occlusion_patches

    def occlusion_fn(B: int, S: int, dev: torch.device) -> torch.Tensor:
        return occlusion_masks(B, S, S, occ_cfg, like=torch.empty(0, device=dev))

    perceptual = build_perceptual(settings.perceptual, model).to(device) if settings.use_percep else None
    return SelfSupStep(settings=settings, keypoints_3d=objects.keypoints.to(device),
                       render_fn=build_renderer(objects, settings.render, device), pnp_fn=solve_pnp,
                       perceptual=perceptual, occlusion_fn=occlusion_fn,
                       extent_points=objects.extent_points() if settings.use_box else None)


def pretrain_synthetic(recipe: Recipe, resume: bool = False) -> Recipe:
    """When ``init.checkpoint`` is empty and ``init.synthetic.steps > 0``: train the synthetic-only
    init first (into ``output_dir/synthetic``) and return ``recipe`` pointing at it."""
    syn = recipe.init.synthetic
    if recipe.init.checkpoint or syn.steps <= 0:
        return recipe
    check_required(recipe, "selfsup")
    out = Path(recipe.output_dir) / "synthetic"
    replace = dataclasses.replace
    pre = replace(recipe, output_dir=str(out), supervised=replace(recipe.supervised, source="synthetic"),
                  optim=replace(recipe.optim, max_steps=syn.steps, lr=syn.lr, lr_steps=syn.lr_steps),
                  init=replace(recipe.init, checkpoint=None, freeze_early_stages=0, freeze_bn=False),
                  eval=replace(recipe.eval, final_test=syn.final_test))
    model_path = out / "model.pt"
    if not model_path.is_file():
        supervised.train(pre, resume=resume)
    return replace(recipe, init=replace(recipe.init, checkpoint=str(model_path)))


def train(recipe: Union[Recipe, Mapping[str, Any]], resume: bool = False) -> Optional[Dict[str, Any]]:
    recipe = pretrain_synthetic(as_recipe(recipe), resume)
    run = Run(recipe, "selfsup")
    seed, data, ss = recipe.seed, recipe.data, recipe.selfsup
    real = run.target_crops(labelled=False)
    sampler = StepSampler(len(real), data.batch_size, seed)
    syn = SyntheticSource(data, run.objects, data.synthetic_batch_size, seed + 1, pool_seed=seed) \
        if ss.use_sup_synthetic else None

    def batches(step: int, rank: int = 0, world: int = 1) -> Dict[str, Any]:
        b = {"real": real.batch(sampler.indices(step, rank, world), with_labels=False)}
        if syn is not None:
            b["synthetic"] = syn(step, rank, world)
        return b

    step_fn = build_step(ss, run.objects, run.model, run.device)
    trainer = run.trainer(step_fn, batches)
    resuming = resume and trainer.checkpoint_path is not None and trainer.checkpoint_path.is_file()
    epochs = recipe.init.adapt_bn_epochs
    if epochs > 0 and not resuming:  # a resumed run's checkpoint holds the statistics it trained with
        _adapt_bn(run, real, epochs, recipe.init.adapt_bn_batch, seed)
    decay = ss.ema_teacher
    if decay > 0:  # after the BN adaptation: the teacher starts from the adapted model
        trainer.state["teacher"] = EMATeacher(run.model, decay)
    log.info("self-supervised: %d unlabeled crops, %d objects, perceptual=%s", len(real), len(run.objects.ids),
             getattr(step_fn.perceptual, "name", None))
    if resume:
        trainer.resume()
    trainer.train()
    return run.finish(trainer, "selfsup")


def _adapt_bn(run: Run, real, epochs: int, batch: int, seed: int) -> None:
    """``init.adapt_bn_epochs`` (ours): BN statistics of Φ re-estimated on the unlabeled crops, in
    batches of ``batch`` (a smaller last one only when there is no full one). Every rank computes
    the same statistics from the same seeded order; rank 0's are broadcast so that they agree."""
    order = torch.randperm(len(real) * epochs, generator=torch.Generator().manual_seed(seed)) % len(real)
    chunks = [order[i:i + batch].tolist() for i in range(0, len(order), batch)]
    if len(chunks) > 1 and len(chunks[-1]) < batch:
        chunks.pop()
    n = adapt_batchnorm(run.model, ((b["image"].to(run.device), b["object_index"].to(run.device))
                                    for b in (real.batch(c, with_labels=False) for c in chunks)))
    du.broadcast_parameters(run.model)
    log.info("BatchNorm statistics re-estimated on %d unlabeled target crops (%d epochs)", n, epochs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``train_selfsup``: exit code 0, or 2 with one line on bad input."""
    return cli_main("train_selfsup", __doc__.split("\n")[0], train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
