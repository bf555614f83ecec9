"""Supervised training of Φ: synthetic-only (the baseline and the self-supervised init) or real labels
(the upper bound). Loss: the source term of Eq. 2, ``Huber(Φ(x) − h)``.

    train_supervised -c training/synthetic_lm_lite.yaml [--set optim.max_steps=2000] [--resume]
    train_supervised -c training/real_labels_lm_lite.yaml
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from pose6d_ros.training import losses as L
from pose6d_ros.training.build import SyntheticSource
from pose6d_ros.training.config import get
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


def train(cfg: Dict[str, Any], resume: bool = False) -> Optional[Dict[str, Any]]:
    run = Run(cfg)
    source = get(cfg, "supervised.source", "synthetic")
    bs = int(get(cfg, "data.batch_size"))
    seed = int(get(cfg, "seed", 0))
    if source == "synthetic":
        batches = SyntheticSource(cfg, run.objects, bs, seed, color_aug=bool(get(cfg, "supervised.color_aug", True)))
    elif source == "real":
        crops = run.target_crops(labelled=True)
        sampler = StepSampler(len(crops), bs, seed)

        def batches(step: int, rank: int = 0, world: int = 1):
            return crops.batch(sampler.indices(step, rank, world))
    else:
        raise ValueError(f"supervised.source must be 'synthetic' or 'real', got {source!r}")
    trainer = run.trainer(supervised_step(float(get(cfg, "selfsup.huber_delta", 0.02))), batches)
    if resume:
        trainer.resume()
    trainer.train()
    return run.finish(trainer, f"supervised-{source}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``train_supervised``: exit code 0, or 2 with one line on bad input."""
    return cli_main("train_supervised", __doc__.split("\n")[0], train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
