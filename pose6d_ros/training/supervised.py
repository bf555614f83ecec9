"""Supervised training of Φ: synthetic-only (the baseline and the self-supervised init) or real labels
(the upper bound). Loss: the source term of Eq. 2, ``Huber(Φ(x) − h)``.

    train_supervised -c training/synthetic_lm_lite.yaml [--set optim.max_steps=2000] [--resume]
    train_supervised -c training/real_labels_lm_lite.yaml
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from pose6d_ros.training import losses as L
from pose6d_ros.training.build import SyntheticSource
from pose6d_ros.training.config import Recipe
from pose6d_ros.training.runner import Run, cli_main
from pose6d_ros.training.trainer import StepOutput, StepSampler, Trainer

__all__ = ["supervised_step", "train", "main"]


def supervised_step(delta: float):
    """``step_fn`` for the trainer: batch ``{"image", "keypoints", "object_index"}``."""

    def step(trainer: Trainer, batch: Dict[str, Any]) -> StepOutput:
        pred = trainer.model(batch["image"], batch["object_index"])
        sup = L.synthetic_supervision(None, None, pred, batch["keypoints"], delta)
        return StepOutput(losses={"sup": sup, "total": sup}, images={"input": batch["image"]})

    return step


def train(recipe: Union[Recipe, Mapping[str, Any]], resume: bool = False) -> Optional[Dict[str, Any]]:
    run = Run(recipe, "supervised")
    r = run.recipe
    source = r.supervised.source
    bs, seed = r.data.batch_size, r.seed
    if source == "synthetic":
        batches = SyntheticSource(r.data, run.objects, bs, seed, pool_seed=seed, color_aug=r.supervised.color_aug)
    else:  # "real" (the recipe's type allows no other)
        crops = run.target_crops(labelled=True)
        sampler = StepSampler(len(crops), bs, seed)

        def batches(step: int, rank: int = 0, world: int = 1):
            return crops.batch(sampler.indices(step, rank, world))
    trainer = run.trainer(supervised_step(r.selfsup.huber_delta), batches)
    if resume:
        trainer.resume()
    trainer.train()
    return run.finish(trainer, f"supervised-{source}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``train_supervised``: exit code 0, or 2 with one line on bad input."""
    return cli_main("train_supervised", __doc__.split("\n")[0], train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
