"""Training of Φ: losses (Eq. 1-3, 5-7), the trainer with hooks, supervised, self-supervised and
distillation entry scripts.

Modules:
    losses        pure loss functions (Huber, L_pose, L_pose2, L_sup, L_percep, mask blend, Eq. 3)
    perceptual    frozen feature extractors for L_percep (VGG-16 from a weights file, or early Φ stages)
    selfsup_step  one self-supervised step (docs/method.md, steps 1-10) with a switch per component
    trainer       Trainer + hooks (checkpoint, logging, evaluation, EMA teacher), per-step RNG streams
    checkpoint    atomic checkpoints with RNG states
    distributed   torchrun helpers (gloo / nccl), gradient averaging
    config        YAML recipes + ``--set key=value`` overrides
    build         config -> registry, model, optimizer, synthetic / target-domain data
    runner        what the two entry scripts share
    supervised    ``train_supervised`` (synthetic-only baseline, real-label upper bound)
    selfsup       ``train_selfsup``
    distill_losses  upper-bounded KD (Eq. 5), KD* (Eq. 7), hint training (Eq. 6) and its 1x1 adapters
    distill       ``distill``: a conditioned student from per-object teachers (Sec. 3.3-3.4)
"""

from pose6d_ros.training.losses import (
    LossWeights,
    huber,
    mask_blend,
    perceptual_distance,
    pose_consistency,
    pose_consistency2,
    synthetic_supervision,
    total_loss,
)

__all__ = [
    "LossWeights", "huber", "mask_blend", "perceptual_distance", "pose_consistency", "pose_consistency2",
    "synthetic_supervision", "total_loss",
]
