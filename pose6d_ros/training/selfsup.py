"""Self-supervised training of Φ on unlabeled target images (Sec. 3.2; method.md steps 1-10).

    train_selfsup -c training/selfsup_lm_lite.yaml --set init.checkpoint=runs/synthetic/model.pt [--resume]

Each step takes a batch of unlabeled real crops (boxes jittered) and a batch of labelled synthetic
crops, and runs :class:`pose6d_ros.training.selfsup_step.SelfSupStep`: Φ -> differentiable PnP ->
soft renderer -> silhouette masking -> Φ on the masked real and rendered crops -> Eq. 1-3.
Φ starts from a synthetic-trained checkpoint with early layers frozen for
``init.freeze_early_steps`` steps, then all layers train. A small labelled diagnostic split is
evaluated every ``eval.period`` steps (logged only; never a loss).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from pose6d_ros.training.build import RunObjects, SyntheticSource
from pose6d_ros.training.config import get, merge, require
from pose6d_ros.training.perceptual import build_perceptual
from pose6d_ros.training.runner import Run, cli_main
from pose6d_ros.training.selfsup_step import SelfSupSettings, SelfSupStep
from pose6d_ros.training.trainer import EMATeacher, StepSampler

__all__ = ["build_renderer", "build_step", "train", "main"]

log = logging.getLogger("pose6d_ros.training")


def build_renderer(objects: RunObjects, cfg: Dict[str, Any], device: torch.device):
    """``render_fn`` over the run's meshes (model-row order), composited over black."""
    from pose6d_ros.rendering.mesh import Mesh, decimate, pack_meshes
    from pose6d_ros.rendering.renderer import RenderSettings, render

    max_faces = int(get(cfg, "selfsup.render.max_faces", 0) or 0)
    meshes = []
    for oid in objects.ids:
        o = objects.registry.get(oid)
        tm = o.load_mesh()
        m = Mesh.from_arrays(np.asarray(tm.vertices, np.float32), np.asarray(tm.faces),
                             np.asarray(tm.visual.vertex_colors)[:, :3] / 255.0, name=o.name)
        if max_faces and m.num_faces > max_faces:
            m = decimate(m, max_faces)
        meshes.append(m)
    batch = pack_meshes(meshes, device=device)
    settings = RenderSettings(sigma=float(get(cfg, "selfsup.render.sigma", 0.7)), background=(0.0, 0.0, 0.0))

    def render_fn(object_index, R, t, K, size):
        return render(batch, object_index, R, t, K, (size, size), settings)

    return render_fn


def build_step(cfg: Dict[str, Any], objects: RunObjects, model: torch.nn.Module, device: torch.device) -> SelfSupStep:
    from pose6d_ros.data.augment import OcclusionConfig, occlusion_masks
    from pose6d_ros.geometry.pnp import solve_pnp

    scfg = dict(get(cfg, "selfsup"))
    settings = SelfSupSettings.from_config(scfg)
    occ_cfg = OcclusionConfig(**(get(cfg, "selfsup.occlusion_patches", {}) or {}))

    def occlusion_fn(B: int, S: int, dev: torch.device) -> torch.Tensor:
        return occlusion_masks(B, S, S, occ_cfg, like=torch.empty(0, device=dev))

    perceptual = build_perceptual(scfg.get("perceptual", {}), model).to(device) if settings.use_percep else None
    return SelfSupStep(settings=settings, keypoints_3d=objects.keypoints.to(device),
                       render_fn=build_renderer(objects, cfg, device), pnp_fn=solve_pnp,
                       perceptual=perceptual, occlusion_fn=occlusion_fn,
                       extent_points=objects.extent_points() if settings.use_box else None)


def pretrain_synthetic(cfg: Dict[str, Any], resume: bool = False) -> Dict[str, Any]:
    """When ``init.checkpoint`` is empty and ``init.synthetic.steps > 0``: train the synthetic-only
    init first (into ``output_dir/synthetic``) and return ``cfg`` pointing at it."""
    from pathlib import Path

    from pose6d_ros.training import supervised

    steps = int(get(cfg, "init.synthetic.steps", 0) or 0)
    if get(cfg, "init.checkpoint") or steps <= 0:
        return cfg
    out = Path(require(cfg, "output_dir", " or --output-dir")) / "synthetic"
    pcfg = merge(cfg, {
        "output_dir": str(out), "supervised": {"source": "synthetic"},
        "optim": {"max_steps": steps, "lr": float(get(cfg, "init.synthetic.lr", 1e-3)),
                  "lr_steps": list(get(cfg, "init.synthetic.lr_steps", []) or [])},
        "init": {"checkpoint": None, "freeze_early_stages": 0, "freeze_bn": False},
        "eval": {"final_test": bool(get(cfg, "init.synthetic.final_test", False))},
    })
    model_path = out / "model.pt"
    if not model_path.is_file():
        supervised.train(pcfg, resume=resume)
    return merge(cfg, {"init": {"checkpoint": str(model_path)}})


def train(cfg: Dict[str, Any], resume: bool = False) -> Optional[Dict[str, Any]]:
    cfg = pretrain_synthetic(cfg, resume)
    run = Run(cfg)
    seed = int(get(cfg, "seed", 0))
    real = run.target_crops(labelled=False)
    sampler = StepSampler(len(real), int(get(cfg, "data.batch_size")), seed)
    use_syn = bool(get(cfg, "selfsup.use_sup_synthetic", True))
    syn = SyntheticSource(cfg, run.objects, int(get(cfg, "data.synthetic_batch_size")), seed + 1) if use_syn else None

    def batches(step: int, rank: int = 0, world: int = 1) -> Dict[str, Any]:
        b = {"real": real.batch(sampler.indices(step, rank, world), with_labels=False)}
        if syn is not None:
            b["synthetic"] = syn(step, rank, world)
        return b

    step_fn = build_step(cfg, run.objects, run.model, run.device)
    trainer = run.trainer(step_fn, batches)
    resuming = resume and trainer.checkpoint_path is not None and trainer.checkpoint_path.is_file()
    epochs = int(get(cfg, "init.adapt_bn_epochs", 0) or 0)
    if epochs > 0 and not resuming:  # a resumed run's checkpoint holds the statistics it trained with
        _adapt_bn(run, real, epochs, int(get(cfg, "init.adapt_bn_batch", 64)), seed)
    decay = float(get(cfg, "selfsup.ema_teacher", 0.0) or 0.0)
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
    from pose6d_ros.training import distributed as du
    from pose6d_ros.training.bn_adapt import adapt_batchnorm

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
