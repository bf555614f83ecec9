"""Faster R-CNN builder (torchvision, no downloads) and detector checkpoints.

The default trunk is EfficientNet-Lite0 with its ImageNet weights (``models.backbones``; the file
ships in a pinned pip package and its sha256 is checked before it is loaded), with a small FPN over
its stride-8/16/32 stages (``efficientnet_lite0_fpn``) or its stride-16 map alone
(``efficientnet_lite0``). torchvision's MobileNetV3 / ResNet-50 FPN detectors stay as random-init
options. The ImageNet file is needed only to *build for training*: a checkpoint holds every weight,
so :func:`load_detector` builds the trunk randomly initialised and never reads it.

Box convention inside torchvision: pixel ``j`` spans ``[j, j + 1)``, so a box is ours
(docs/conventions.md: pixel centres at integers, edges at ``j -+ 0.5``) shifted by ``+0.5``.
:data:`TV_OFFSET` converts; it is applied only at the boundary of this package (scenes' targets,
``infer.Detector`` outputs). torchvision's resize of images and boxes is exact in its convention.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from pose6d_ros._io import atomic_torch_save, safe_torch_load
from pose6d_ros._rng import rng_state

__all__ = ["ARCHS", "LITE_ARCHS", "TV_ARCHS", "LiteTrunk", "TV_OFFSET", "DetectorSpec", "build_detector", "build_from_spec", "save_detector", "load_detector",
           "DetectorCheckpointError"]

#: ImageNet-initialised first (the default), then torchvision's random-init detectors.
LITE_ARCHS = ("efficientnet_lite0_fpn", "efficientnet_lite0")
TV_ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
ARCHS = LITE_ARCHS + TV_ARCHS
#: EfficientNet-Lite0 ``Backbone`` stages whose outputs feed the FPN: stride 8 (40 ch), 16 (112), 32 (1280).
_FPN_STAGES, _FPN_IN = (2, 3, 4), (40, 112, 1280)
#: the single-map trunk ends at stage 3: stride 16, 112 channels.
_SINGLE_STAGE, _SINGLE_IN = 3, 112
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
        frozen_stages: EfficientNet archs: trunk stages (of 5: strides 2, 4, 8, 16, 32) whose weights
            are frozen, BatchNorm included. Default 3 (up to the stride-8 blocks): generic ImageNet
            features transfer from synthetic to real images better than ones tuned on renders
            (Hinterstoisser et al. 2018, "On pre-trained image features and synthetic images for
            deep learning"), and no gradient flows through the costly high-resolution stages
            (a training step at 320x240 takes ~0.7x the time of freezing 2).
        trunk_bn_eval: EfficientNet archs: every trunk BatchNorm keeps its ImageNet statistics (eval
            mode) even in training, as torchvision's ``FrozenBatchNorm2d`` does for its pretrained
            trunks: batches of a few synthetic frames would drag them towards the synthetic domain.
        fpn_channels: ``efficientnet_lite0_fpn``: channels of the FPN maps.
        anchor_sizes: EfficientNet archs: anchor sizes (pixels of the resized input) per FPN level
            (strides 8, 16, 32, 64); the single-map arch puts all of them on its one map.
        aspect_ratios: anchor aspect ratios (height / width), the same on every level.

    The last five fields are ignored by the torchvision archs (checkpoints written before they
    existed load with their defaults).
    """

    object_ids: tuple
    object_names: tuple
    arch: str = ARCHS[0]
    min_size: int = 240
    max_size: int = 320
    box_head_dim: int = 256
    rpn_post_nms_train: int = 300
    box_batch: int = 128
    frozen_stages: int = 3
    trunk_bn_eval: bool = True
    fpn_channels: int = 64
    anchor_sizes: tuple = ((16, 24), (32, 48), (64, 96), (128, 192))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)

    @property
    def num_classes(self) -> int:
        return len(self.object_ids) + 1


class LiteTrunk(torch.nn.Module):
    """EfficientNet-Lite0 stages as a Faster R-CNN backbone.

    Args:
        body: the ``models.backbones.efficientnet_lite0`` trunk (its 5 stages; the single-map
            variant keeps the first 4).
        fpn_channels: ``None``: one map, stage 3's output (stride 16, 112 channels), named ``"0"``.
            Otherwise a ``torchvision.ops.FeaturePyramidNetwork`` over stages 2, 3, 4 (strides 8,
            16, 32) with ``fpn_channels`` channels, plus a stride-64 max-pooled level: maps
            ``"0", "1", "2", "pool"``.
        bn_eval: keep every BatchNorm of ``body`` in eval mode under ``train()`` (see
            :class:`DetectorSpec`); the frozen stages' BatchNorm stay in eval mode regardless.

    Shape:
        input ``(B, 3, H, W)`` normalised to [-1, 1] (the transform's ``image_mean = image_std = 0.5``);
        output an ordered dict of ``(B, out_channels, H / s, W / s)`` maps.
    """

    def __init__(self, body: torch.nn.Module, fpn_channels: Optional[int], bn_eval: bool = True) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.bn_eval = bool(bn_eval)
        if fpn_channels:
            self.returned = _FPN_STAGES
            self.fpn = FeaturePyramidNetwork(list(_FPN_IN), int(fpn_channels), extra_blocks=LastLevelMaxPool())
            self.out_channels = int(fpn_channels)
        else:
            self.returned = (_SINGLE_STAGE,)
            self.fpn = None
            self.out_channels = _SINGLE_IN
            body.stages = body.stages[:_SINGLE_STAGE + 1]  # stage 4 (stride 32) would run for nothing
        self.body = body

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for i, stage in enumerate(self.body.stages):
            x = stage(x)
            if i in self.returned:
                feats[str(len(feats))] = x
        return self.fpn(feats) if self.fpn is not None else feats

    def train(self, mode: bool = True) -> "LiteTrunk":
        super().train(mode)
        if self.bn_eval:
            for m in self.body.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _lite_detector(num_classes: int, arch: str, *, min_size: int, max_size: int, box_head_dim: int,
                   rpn_post_nms_train: int, box_batch: int, frozen_stages: int, trunk_bn_eval: bool,
                   fpn_channels: int, anchor_sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[float],
                   pretrained: bool, trunk_weights: Optional[str | os.PathLike]) -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from pose6d_ros.models.backbones import efficientnet_lite0

    fpn = arch == "efficientnet_lite0_fpn"
    sizes = tuple(tuple(int(a) for a in level) for level in anchor_sizes)
    if fpn and len(sizes) != 4:
        raise ValueError(f"build_detector: anchor_sizes needs 4 levels (strides 8, 16, 32, 64) for {arch}, "
                         f"got {len(sizes)}")
    if len({len(level) for level in sizes}) != 1 or not sizes[0]:
        raise ValueError(f"build_detector: anchor_sizes must have the same number of sizes on every level, got {sizes}")
    if not fpn:
        sizes = (tuple(sorted({a for level in sizes for a in level})),)
    if fpn and fpn_channels < 1:
        raise ValueError(f"build_detector: fpn_channels must be >= 1, got {fpn_channels}")
    body = efficientnet_lite0(pretrained=pretrained, weights=trunk_weights)
    body.freeze_early(frozen_stages)  # raises ValueError naming the range
    trunk = LiteTrunk(body, fpn_channels if fpn else None, bn_eval=trunk_bn_eval)
    ratios = tuple(float(r) for r in aspect_ratios)
    anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))
    names = ["0", "1", "2"] if fpn else ["0"]
    resolution = 7
    return FasterRCNN(
        trunk, num_classes=None, min_size=min_size, max_size=max_size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],  # RGB [0, 1] -> [-1, 1], the weights' input
        rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=2 * rpn_post_nms_train,
        rpn_post_nms_top_n_train=rpn_post_nms_train, rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300,
        box_roi_pool=MultiScaleRoIAlign(names, resolution, 2),
        box_head=TwoMLPHead(trunk.out_channels * resolution ** 2, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes), box_batch_size_per_image=box_batch)


def build_detector(num_classes: int, *, arch: str = ARCHS[0], min_size: int = 240, max_size: int = 320,
                   box_head_dim: int = 256, rpn_post_nms_train: int = 300, box_batch: int = 128,
                   frozen_stages: int = DetectorSpec.frozen_stages, trunk_bn_eval: bool = DetectorSpec.trunk_bn_eval,
                   fpn_channels: int = DetectorSpec.fpn_channels,
                   anchor_sizes: Sequence[Sequence[int]] = DetectorSpec.anchor_sizes,
                   aspect_ratios: Sequence[float] = DetectorSpec.aspect_ratios, pretrained: bool = True,
                   trunk_weights: Optional[str | os.PathLike] = None,
                   backbone_weights: Optional[str | os.PathLike] = None) -> torch.nn.Module:
    """A torchvision Faster R-CNN; nothing is ever downloaded.

    Args:
        num_classes: object classes + 1 (background).
        arch: one of :data:`ARCHS`. ``efficientnet_lite0_fpn`` (default) / ``efficientnet_lite0``:
            :class:`LiteTrunk` on the ImageNet EfficientNet-Lite0; the torchvision archs start
            from random weights (``weights=None, weights_backbone=None``).
        min_size, max_size: input resize (torchvision ``GeneralizedRCNNTransform``).
        box_head_dim: hidden width of the box head.
        rpn_post_nms_train, box_batch: proposals / sampled RoIs per training image.
        frozen_stages, trunk_bn_eval, fpn_channels, anchor_sizes, aspect_ratios: EfficientNet archs
            only (see :class:`DetectorSpec`).
        pretrained: EfficientNet archs: load the ImageNet weights (sha256-checked); ``False`` when a
            checkpoint will overwrite every weight anyway.
        trunk_weights: another copy of the EfficientNet-Lite0 ``.pth`` (same sha256 required);
            default: the pinned package's file.
        backbone_weights: optional local ``state_dict`` file of ``model.backbone.body`` (e.g. a
            trunk saved from an earlier run), loaded over whatever the trunk started from.

    Raises:
        ValueError: unknown ``arch``, ``num_classes < 2`` or a bad EfficientNet setting.
        FileNotFoundError: ``backbone_weights`` does not exist (the message names the path).
        models.pretrained.PretrainedWeightsError: the ImageNet file is missing or has another sha256
            (one line naming it).
    """
    from torchvision.models import detection as tvd
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    if arch not in ARCHS:
        raise ValueError(f"build_detector: arch must be one of {ARCHS}, got {arch!r}")
    if num_classes < 2:
        raise ValueError(f"build_detector: num_classes must be >= 2 (background + objects), got {num_classes}")
    path = Path(backbone_weights) if backbone_weights is not None else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"build_detector: backbone_weights file not found: {path}")
    if arch in LITE_ARCHS:
        model = _lite_detector(num_classes, arch, min_size=min_size, max_size=max_size, box_head_dim=box_head_dim,
                               rpn_post_nms_train=rpn_post_nms_train, box_batch=box_batch,
                               frozen_stages=frozen_stages, trunk_bn_eval=trunk_bn_eval, fpn_channels=fpn_channels,
                               anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios, pretrained=pretrained,
                               trunk_weights=trunk_weights)
    else:
        builder = getattr(tvd, arch)
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
                        max_size=max_size, rpn_pre_nms_top_n_train=2 * rpn_post_nms_train,
                        rpn_post_nms_top_n_train=rpn_post_nms_train, box_batch_size_per_image=box_batch)
        resolution = model.roi_heads.box_roi_pool.output_size[0]
        channels = model.backbone.out_channels
        model.roi_heads.box_head = TwoMLPHead(channels * resolution ** 2, box_head_dim)
        model.roi_heads.box_predictor = FastRCNNPredictor(box_head_dim, num_classes)
    if path is not None:
        state = safe_torch_load(path, "backbone weights")
        if not isinstance(state, dict):
            raise ValueError(f"build_detector: {path}: expected a state dict, got {type(state).__name__}")
        missing, unexpected = model.backbone.body.load_state_dict(state, strict=False)
        if len(unexpected) == len(state):
            raise ValueError(f"build_detector: {path}: no tensor matches the {arch} backbone")
    return model


_ARCH_FIELDS = ("arch", "min_size", "max_size", "box_head_dim", "rpn_post_nms_train", "box_batch", "frozen_stages",
                "trunk_bn_eval", "fpn_channels", "anchor_sizes", "aspect_ratios")


def build_from_spec(spec: DetectorSpec, backbone_weights: Optional[str | os.PathLike] = None, *,
                    pretrained: bool = True, trunk_weights: Optional[str | os.PathLike] = None) -> torch.nn.Module:
    """:func:`build_detector` with the architecture and sizes of ``spec``."""
    return build_detector(spec.num_classes, **{k: getattr(spec, k) for k in _ARCH_FIELDS},
                          pretrained=pretrained, trunk_weights=trunk_weights, backbone_weights=backbone_weights)


def _tuples(value: Any) -> Any:
    """Lists (as a checkpoint may hold them) back to the spec's nested tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


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
        raw = {k: _tuples(v) for k, v in dict(state["spec"]).items()}
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
    try:  # the checkpoint holds every weight: the ImageNet file is not read
        model = build_from_spec(spec, pretrained=False)
    except ValueError as e:
        raise DetectorCheckpointError(f"{path}: bad 'spec' entry ({e})") from e
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), "")[:300]
        raise DetectorCheckpointError(f"{path}: weights do not fit {spec.arch} with {spec.num_classes} classes "
                                      f"({first})") from e
    model.to(device).eval()
    return model, spec, state
