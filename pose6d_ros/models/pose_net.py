"""The pose network Φ: crop + object index -> 2D keypoints (Sec. 3.1, 3.3), its model card and
checkpoint I/O."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pose6d_ros._checks import check_same_batch, check_shape
from pose6d_ros._io import atomic_write, safe_torch_load
from pose6d_ros.data.crops import DEFAULT_CROP_PADDING
from pose6d_ros.models.backbones import build_backbone
from pose6d_ros.models.conditioning import (
    ConditionalInstanceNorm,
    NoConditioning,
    OneHotConditioning,
    _exporting,
)
from pose6d_ros.registry import ObjectRegistry

CHECKPOINT_FORMAT = "pose6d_ros.pose_net/1"

#: conditioning name -> (feature conditioning module, whether the head has one output per object)
CONDITIONINGS: Dict[str, Tuple[type, bool]] = {
    "cin": (ConditionalInstanceNorm, False),  # Eq. 4, shared head
    "onehot": (OneHotConditioning, False),  # baseline: one-hot appended to the features
    "multi": (NoConditioning, True),  # baseline "Multi": one output per object
    "none": (NoConditioning, False),  # plain single-object net
}

DEFAULT_CONFIG: Dict[str, Any] = {
    "backbone": "resnet18",
    "num_objects": 1,
    "num_keypoints": 9,
    "conditioning": "cin",
    "crop_size": 64,
    "small_input": None,  # None: drop the stem stride when crop_size <= 64
    "pretrained": None,  # None: the backbone's own choice (ImageNet for efficientnet_lite0, random for the rest)
    "head_channels": 128,
    "head_hidden": 256,
    "head_pool": 4,
}


class PoseNet(nn.Module):
    """Φ(x, c) -> h: keypoints of object ``c`` in crop ``x``.

    Args:
        backbone: registered backbone name (``resnet18``, ``mobilenet_v3_small``, ``vgg16``,
            ``efficientnet_lite0``).
        num_objects: N objects the net is conditioned on (1 for a single-object net).
        num_keypoints: K keypoints per object (same order for every object).
        conditioning: ``"cin"`` (Eq. 4), ``"onehot"``, ``"multi"`` (one head output per object) or
            ``"none"``.
        crop_size: S, the side of the square input crops the net is built for.
        small_input: drop the backbone's stem stride (default: when ``crop_size <= 64``).
        head_channels, head_hidden, head_pool: head sizes (1x1 conv channels, FC width, pooled side).
        pretrained: start the backbone from ImageNet weights (only ``efficientnet_lite0`` has them,
            and uses them by default); ``None`` leaves the backbone's default.

    Shape:
        - images: ``(B, 3, S, S)`` RGB in ``[0, 1]`` (the backbone's input normalisation happens
          inside: ImageNet mean/std, or ``[-1, 1]`` for ``efficientnet_lite0``)
        - object_index: ``(B,)`` long in ``[0, N)``, each sample's row of the model card
        - output: ``(B, K, 2)`` keypoints in normalised crop coordinates (``docs/conventions.md``);
          with ``return_features`` also the last conv features before conditioning ``(B, C, h, w)``.

    Example:
        >>> net = PoseNet(num_objects=3, crop_size=64).eval()
        >>> net(torch.rand(2, 3, 64, 64), torch.tensor([0, 2])).shape
        torch.Size([2, 9, 2])
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        num_objects: int = 1,
        num_keypoints: int = 9,
        conditioning: str = "cin",
        crop_size: int = 64,
        small_input: bool | None = None,
        head_channels: int = 128,
        head_hidden: int = 256,
        head_pool: int = 4,
        pretrained: bool | None = None,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {sorted(CONDITIONINGS)}, got {conditioning!r}")
        if num_objects < 1 or num_keypoints < 1 or crop_size < 8:
            raise ValueError(
                f"need num_objects >= 1, num_keypoints >= 1, crop_size >= 8; got "
                f"{num_objects}, {num_keypoints}, {crop_size}"
            )
        if small_input is None:
            small_input = crop_size <= 64
        self.config: Dict[str, Any] = dict(
            backbone=backbone, num_objects=num_objects, num_keypoints=num_keypoints,
            conditioning=conditioning, crop_size=crop_size, small_input=small_input,
            head_channels=head_channels, head_hidden=head_hidden, head_pool=head_pool, pretrained=pretrained,
        )
        self.num_objects = num_objects
        self.num_keypoints = num_keypoints
        self.crop_size = crop_size
        self.backbone = build_backbone(backbone, small_input=small_input,
                                       **({} if pretrained is None else {"pretrained": bool(pretrained)}))
        self.register_buffer("mean", torch.tensor(self.backbone.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.input_std).view(1, 3, 1, 1), persistent=False)
        channels = self.backbone.out_channels
        cond_cls, self.multi_head = CONDITIONINGS[conditioning]
        self.conditioning = cond_cls(num_objects, channels)
        cond_channels = getattr(self.conditioning, "out_channels", channels)
        outputs = num_keypoints * 2 * (num_objects if self.multi_head else 1)
        self.head = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(cond_channels, head_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(head_pool),
            nn.Flatten(),
            nn.Linear(head_channels * head_pool * head_pool, head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(head_hidden, outputs),
        )
        # Start near the crop centre so early PnP/rendering sees sane poses.
        nn.init.normal_(self.head[-1].weight, std=1e-3)
        nn.init.zeros_(self.head[-1].bias)
        self._bn_frozen = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, load_pretrained: bool = True) -> "PoseNet":
        """Build from a dict (unknown keys are an error; missing keys take :data:`DEFAULT_CONFIG`).

        ``load_pretrained=False`` skips reading ImageNet weights (the caller loads a state dict next,
        as :func:`load_model` does); ``config["pretrained"]`` is still recorded as given."""
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise KeyError(f"unknown PoseNet config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
        full = {**DEFAULT_CONFIG, **dict(config)}
        if load_pretrained:
            return cls(**full)
        model = cls(**{**full, "pretrained": False})
        model.config["pretrained"] = full["pretrained"]
        return model

    def forward(
        self, images: torch.Tensor, object_index: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if not _exporting():
            check_shape(images, ("B", 3, self.crop_size, self.crop_size), "images")
            check_shape(object_index, ("B",), "object_index")
            check_same_batch(("images", images), ("object_index", object_index))
        features = self.backbone(self.normalize(images))
        out = self.head(self.conditioning(features, object_index))
        if self.multi_head:
            out = out.view(-1, self.num_objects, self.num_keypoints * 2)
            out = out[torch.arange(out.shape[0], device=out.device), object_index]
        keypoints = out.reshape(-1, self.num_keypoints, 2)
        return (keypoints, features) if return_features else keypoints

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's input normalisation of ``(B, 3, S, S)`` RGB images in ``[0, 1]``: what
        ``backbone.stages`` expect (use it when running stages on their own, e.g. as perceptual features)."""
        return (images - self.mean) / self.std

    def freeze_early(self, n_stages: int) -> None:
        """Stop gradients through the first ``n_stages`` backbone stages (see :class:`Backbone`)."""
        self.backbone.freeze_early(n_stages)
        # Backbone.freeze_early re-enters train() on the backbone alone, which would put the BatchNorm
        # layers of the other stages back in training mode under freeze_bn: re-apply this module's mode
        self.train(self.training)

    def freeze_bn(self, freeze: bool = True) -> None:
        """Keep every BatchNorm in eval mode (running statistics frozen) even under ``train()``.

        The affine BN parameters stay trainable. Self-supervised batches are small and biased
        (one view of one object), so updating the running statistics from them drifts.
        """
        self._bn_frozen = freeze
        self.train(self.training)

    def train(self, mode: bool = True) -> "PoseNet":
        super().train(mode)
        if self._bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


@dataclass(frozen=True)
class ModelCard:
    """What a trained Φ is for; stored with the checkpoint and in the ONNX file.

    Attributes:
        object_ids: registry ids of the objects, in object-index order (row ``i`` of the CIN table).
        object_names: their names, same order.
        keypoints: per object the 3D keypoints in metres, model frame, ``(N, K, 3)`` as nested lists.
        crop_size: S of the input crops.
        backbone: backbone name.
        conditioning: ``cin`` / ``onehot`` / ``multi`` / ``none``.
        crop_padding: crop window side over the detection box's longer side used in training
            (``data.crops.square_windows``); the runtime must crop the same way.
        extra: free-form notes (training run, data), JSON-serialisable.
        parameters: parameters of the network (:func:`count_parameters`; the CIN table included;
            training-only modules such as hint adapters are not part of the network).
        macs_per_crop: multiply-accumulates of one crop's forward pass in Conv2d and Linear layers
            (:func:`count_macs`).
        training: how it was trained, JSON-serialisable: ``kind`` (trainer), ``recipe`` (the whole
            resolved config) and, for a distilled student, ``teachers`` (one record per object).

    ``parameters`` and ``macs_per_crop`` are measured from the network (:func:`save_model` and
    ``export_onnx`` fill them when absent), not declared, so they take no part in comparing two cards.
    """

    object_ids: Tuple[int, ...]
    object_names: Tuple[str, ...]
    keypoints: Tuple[Tuple[Tuple[float, float, float], ...], ...]
    crop_size: int
    backbone: str
    conditioning: str
    crop_padding: float = DEFAULT_CROP_PADDING
    extra: Mapping[str, Any] = field(default_factory=dict)
    parameters: Optional[int] = field(default=None, compare=False)
    macs_per_crop: Optional[int] = field(default=None, compare=False)
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.object_ids)
        if n == 0 or len(self.object_names) != n or len(self.keypoints) != n:
            raise ValueError(
                f"model card: object_ids ({n}), object_names ({len(self.object_names)}) and keypoints "
                f"({len(self.keypoints)}) must be non-empty and of equal length"
            )
        kp = np.asarray(self.keypoints, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[2] != 3 or not np.isfinite(kp).all():
            raise ValueError(f"model card: keypoints must be finite (N, K, 3), got shape {kp.shape}")
        if not self.crop_padding > 0:
            raise ValueError(f"model card: crop_padding must be > 0, got {self.crop_padding}")
        if len(set(self.object_ids)) != n:
            raise ValueError(f"model card: duplicate object ids {list(self.object_ids)}")

    @classmethod
    def create(
        cls,
        *,
        object_ids: Sequence[int],
        object_names: Sequence[str],
        keypoints: Union[np.ndarray, torch.Tensor, Sequence],
        crop_size: int,
        backbone: str,
        conditioning: str,
        crop_padding: float = DEFAULT_CROP_PADDING,
        extra: Mapping[str, Any] | None = None,
        parameters: Optional[int] = None,
        macs_per_crop: Optional[int] = None,
        training: Mapping[str, Any] | None = None,
    ) -> "ModelCard":
        """Build a card from arrays (``keypoints`` ``(N, K, 3)`` metres). ``training`` goes through
        JSON (paths and other objects become strings), so the card round-trips through its file."""
        if isinstance(keypoints, torch.Tensor):
            keypoints = keypoints.detach().cpu().double().numpy()
        kp = np.asarray(keypoints, dtype=np.float64)
        return cls(
            object_ids=tuple(int(i) for i in object_ids),
            object_names=tuple(str(s) for s in object_names),
            keypoints=tuple(tuple(tuple(float(v) for v in p) for p in obj) for obj in kp),
            crop_size=int(crop_size), backbone=str(backbone), conditioning=str(conditioning),
            crop_padding=float(crop_padding), extra=dict(extra or {}),
            parameters=None if parameters is None else int(parameters),
            macs_per_crop=None if macs_per_crop is None else int(macs_per_crop),
            training=json.loads(json.dumps(dict(training or {}), default=str)),
        )

    def with_model_stats(self, model: "PoseNet") -> "ModelCard":
        """This card with ``parameters`` and ``macs_per_crop`` measured on ``model``."""
        return dataclasses.replace(self, parameters=count_parameters(model),
                                   macs_per_crop=count_macs(model, self.crop_size))

    @classmethod
    def for_model(cls, model: PoseNet, registry: ObjectRegistry, object_ids: Sequence[Union[int, str]] | None = None,
                  crop_padding: float = DEFAULT_CROP_PADDING, extra: Mapping[str, Any] | None = None) -> "ModelCard":
        """Card for ``model`` trained on ``object_ids`` (default: every registry object, in order)."""
        objects = [registry.resolve(i) for i in object_ids] if object_ids is not None else list(registry)
        if len(objects) != model.num_objects:
            raise ValueError(f"model has {model.num_objects} objects, {len(objects)} given")
        return cls.create(
            object_ids=[o.id for o in objects], object_names=[o.name for o in objects],
            keypoints=np.stack([np.asarray(o.keypoints, dtype=np.float64) for o in objects]),
            crop_size=model.crop_size, backbone=model.config["backbone"],
            conditioning=model.config["conditioning"], crop_padding=crop_padding, extra=extra,
        )

    @property
    def keypoints_array(self) -> np.ndarray:
        """``(N, K, 3)`` float64 keypoints."""
        return np.asarray(self.keypoints, dtype=np.float64)

    def index_of(self, object_id: int) -> int:
        """Object index (row of the conditioning table) of registry id ``object_id``."""
        try:
            return self.object_ids.index(int(object_id))
        except ValueError:
            raise KeyError(f"object id {object_id} is not one of the model's objects {list(self.object_ids)}") from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        d = json.loads(text)
        return cls.create(**d)

    def check_against(self, registry: ObjectRegistry, atol: float = 1e-6) -> None:
        """Raise ``ValueError`` naming the object unless every model object exists in ``registry``
        with the same name and the same keypoints (within ``atol`` metres)."""
        problems = []
        for oid, name, kp in zip(self.object_ids, self.object_names, self.keypoints_array):
            try:
                obj = registry.get(int(oid))
            except KeyError:
                problems.append(f"object id {oid} ({name!r}) is not in the registry")
                continue
            if obj.name != name:
                problems.append(f"object id {oid}: model says {name!r}, registry says {obj.name!r}")
            reg_kp = np.asarray(obj.keypoints, dtype=np.float64)
            if reg_kp.shape != kp.shape or not np.allclose(reg_kp, kp, atol=atol, rtol=0):
                problems.append(f"object id {oid} ({name!r}): keypoints differ from the registry's")
        if problems:
            raise ValueError("model does not match the object registry: " + "; ".join(problems))


_atomic_write = atomic_write


def save_model(path: Union[str, os.PathLike], model: PoseNet, card: ModelCard) -> None:
    """Write ``model``'s config, weights and ``card`` to ``path`` atomically (temp file + rename).
    The card gets the network's parameter count and MACs per crop when it lacks them."""
    if card.crop_size != model.crop_size or len(card.object_ids) != model.num_objects:
        raise ValueError(
            f"card (crop {card.crop_size}, {len(card.object_ids)} objects) does not fit the model "
            f"(crop {model.crop_size}, {model.num_objects} objects)"
        )
    if card.parameters is None or card.macs_per_crop is None:
        card = card.with_model_stats(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": model.config, "card": card.to_json(), "state_dict": state}
    _atomic_write(Path(path), lambda f: torch.save(payload, f))


class ModelLoadError(ValueError):
    """A model file that cannot be used: truncated, corrupt, empty, of another format, or refused
    (it holds more than tensors and plain data). The message is one line naming the file."""


def load_model(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> Tuple[PoseNet, ModelCard]:
    """Read a checkpoint written by :func:`save_model`; returns ``(model in eval mode, card)``.

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: naming the file, for anything else that keeps it from loading.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    try:
        payload = safe_torch_load(path, "model checkpoint", map_location=map_location)
    except RuntimeError as e:  # one line naming the file already
        raise ModelLoadError(str(e)) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        model = PoseNet.from_config(payload["config"], load_pretrained=False)  # the weights are in the file
        model.load_state_dict(payload["state_dict"])
        card = ModelCard.from_json(payload["card"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a damaged or hand-edited payload
        detail = " ".join(str(e).split())[:300]
        raise ModelLoadError(f"model checkpoint {path}: damaged ({type(e).__name__}: {detail})") from e
    return model.to(map_location).eval(), card


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (every ``nn.Parameter``, trainable or frozen; buffers such
    as BatchNorm running statistics are not parameters)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, crop_size: int) -> int:
    """Multiply-accumulates of one forward pass on one ``(1, 3, crop_size, crop_size)`` crop,
    counted by forward hooks on every ``Conv2d`` and ``Linear``.

    A convolution costs ``out_elements · in_channels / groups · kh · kw`` MACs and a linear layer
    ``out_elements · in_features``, where ``out_elements`` is the number of values it produces.
    Normalisations, activations, pooling and the CIN lookup are not counted (a few per value, next
    to hundreds per conv output). ``model`` is run in eval mode under ``no_grad`` on its own device
    (so BatchNorm statistics do not move) and left in the mode it was in; a multi-output head
    counts every object's outputs, since all of them are computed.
    """
    total = [0]

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        total[0] += out.numel() * m.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, crop_size, crop_size, device=device),
                  torch.zeros(1, dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total[0])
