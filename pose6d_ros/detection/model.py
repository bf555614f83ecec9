"""Faster R-CNN builder (torchvision, no downloads) and detector checkpoints.

Box convention inside torchvision: pixel ``j`` spans ``[j, j + 1)``, so a box is ours
(docs/conventions.md: pixel centres at integers, edges at ``j -+ 0.5``) shifted by ``+0.5``.
:data:`TV_OFFSET` converts; it is applied only at the boundary of this package (scenes' targets,
``infer.Detector`` outputs). torchvision's resize of images and boxes is exact in its convention.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from pose6d_ros._io import atomic_torch_save, safe_torch_load
from pose6d_ros._rng import rng_state

__all__ = ["ARCHS", "TV_OFFSET", "DetectorSpec", "build_detector", "build_from_spec", "save_detector", "load_detector",
           "DetectorCheckpointError"]

ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
#: torchvision box = our box + TV_OFFSET (both corners).
TV_OFFSET = 0.5
_FORMAT = "pose6d_ros.detector/1"


class DetectorCheckpointError(ValueError):
    """A detector checkpoint that is missing, unreadable, or does not match what the caller needs."""


@dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to rebuild a detector (stored in its checkpoint).

    Attributes:
        object_ids: registry ids; class label ``k + 1`` is ``object_ids[k]`` (0 is background).
        object_names: the matching registry names (what the node publishes as ``class_id``).
        arch: one of :data:`ARCHS`.
        min_size, max_size: torchvision's resize of the input (shorter side, cap on the longer).
        box_head_dim: width of the two-layer box head (torchvision's default is 1024; a narrower
            head trains much faster on a CPU).
        rpn_post_nms_train, box_batch: proposals kept and RoIs sampled per image in training.
    """

    object_ids: tuple
    object_names: tuple
    arch: str = ARCHS[0]
    min_size: int = 240
    max_size: int = 320
    box_head_dim: int = 256
    rpn_post_nms_train: int = 300
    box_batch: int = 128

    @property
    def num_classes(self) -> int:
        return len(self.object_ids) + 1


def build_detector(num_classes: int, *, arch: str = ARCHS[0], min_size: int = 240, max_size: int = 320,
                   box_head_dim: int = 256, rpn_post_nms_train: int = 300, box_batch: int = 128,
                   backbone_weights: Optional[str | os.PathLike] = None) -> torch.nn.Module:
    """A torchvision Faster R-CNN with random weights (``weights=None, weights_backbone=None``).

    Args:
        num_classes: object classes + 1 (background).
        arch: ``"fasterrcnn_mobilenet_v3_large_320_fpn"`` or ``"fasterrcnn_resnet50_fpn"``.
        min_size, max_size: input resize (torchvision ``GeneralizedRCNNTransform``).
        box_head_dim: hidden width of the box head.
        rpn_post_nms_train, box_batch: proposals / sampled RoIs per training image.
        backbone_weights: optional local ``state_dict`` file of the backbone's body (e.g. ImageNet
            weights copied onto the machine); nothing is ever downloaded.

    Raises:
        ValueError: unknown ``arch`` or ``num_classes < 2``.
        FileNotFoundError: ``backbone_weights`` does not exist (the message names the path).
    """
    from torchvision.models import detection as tvd
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    if arch not in ARCHS:
        raise ValueError(f"build_detector: arch must be one of {ARCHS}, got {arch!r}")
    if num_classes < 2:
        raise ValueError(f"build_detector: num_classes must be >= 2 (background + objects), got {num_classes}")
    builder = getattr(tvd, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
                    max_size=max_size, rpn_pre_nms_top_n_train=2 * rpn_post_nms_train,
                    rpn_post_nms_top_n_train=rpn_post_nms_train, box_batch_size_per_image=box_batch)
    resolution = model.roi_heads.box_roi_pool.output_size[0]
    channels = model.backbone.out_channels
    model.roi_heads.box_head = TwoMLPHead(channels * resolution ** 2, box_head_dim)
    model.roi_heads.box_predictor = FastRCNNPredictor(box_head_dim, num_classes)
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(f"build_detector: backbone_weights file not found: {path}")
        state = safe_torch_load(path, "backbone weights")
        if not isinstance(state, dict):
            raise ValueError(f"build_detector: {path}: expected a state dict, got {type(state).__name__}")
        missing, unexpected = model.backbone.body.load_state_dict(state, strict=False)
        if len(unexpected) == len(state):
            raise ValueError(f"build_detector: {path}: no tensor matches the {arch} backbone")
    return model


def build_from_spec(spec: DetectorSpec, backbone_weights: Optional[str | os.PathLike] = None) -> torch.nn.Module:
    """:func:`build_detector` with the architecture and sizes of ``spec``."""
    return build_detector(spec.num_classes, arch=spec.arch, min_size=spec.min_size, max_size=spec.max_size,
                          box_head_dim=spec.box_head_dim, rpn_post_nms_train=spec.rpn_post_nms_train,
                          box_batch=spec.box_batch, backbone_weights=backbone_weights)


def save_detector(path: str | os.PathLike, model: torch.nn.Module, spec: DetectorSpec, *, step: int = 0,
                  optimizer: Optional[torch.optim.Optimizer] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write model + spec (+ optimizer, step, RNG) atomically (``_io.atomic_torch_save``).

    Only tensors and plain data, so :func:`load_detector` reads it with ``weights_only=True``."""
    state: Dict[str, Any] = {"format": _FORMAT, "spec": asdict(spec), "model": model.state_dict(),
                             "step": int(step), "rng": rng_state(), "extra": dict(extra or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return atomic_torch_save(path, state)


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu",
                  expect_names: Optional[Sequence[str]] = None) -> tuple[torch.nn.Module, DetectorSpec, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_detector`.

    Args:
        expect_names: when given, the object names the caller's registry has; every class of the
            checkpoint must be among them (else :class:`DetectorCheckpointError` naming the extras).

    Returns:
        ``(model in eval mode on device, spec, raw state)``; the raw state holds ``step``,
        ``optimizer`` and ``rng`` for resuming.
    """
    path = Path(path)
    if not path.is_file():
        raise DetectorCheckpointError(f"detector checkpoint not found: {path}")
    try:  # weights_only: a crafted file is refused, never run
        state = safe_torch_load(path, "detector checkpoint")
    except RuntimeError as e:
        raise DetectorCheckpointError(str(e)) from e
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise DetectorCheckpointError(f"{path}: not a pose6d_ros detector checkpoint (format != {_FORMAT})")
    try:
        raw = dict(state["spec"])
        raw["object_ids"], raw["object_names"] = tuple(raw["object_ids"]), tuple(raw["object_names"])
        spec = DetectorSpec(**raw)
    except (KeyError, TypeError, ValueError) as e:
        raise DetectorCheckpointError(f"{path}: bad 'spec' entry ({type(e).__name__}: {e})") from e
    if "model" not in state:
        raise DetectorCheckpointError(f"{path}: no 'model' entry")
    if expect_names is not None:
        extra = sorted(set(spec.object_names) - set(expect_names))
        if extra:
            raise DetectorCheckpointError(f"{path}: detector classes {extra} are not in the object registry "
                                          f"({list(expect_names)})")
    model = build_from_spec(spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), "")[:300]
        raise DetectorCheckpointError(f"{path}: weights do not fit {spec.arch} with {spec.num_classes} classes "
                                      f"({first})") from e
    model.to(device).eval()
    return model, spec, state
