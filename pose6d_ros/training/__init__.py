"""Training of Φ: losses (Eq. 1-3), the trainer with hooks, supervised and self-supervised entry scripts.

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
