"""Convolutional trunks for the pose network Φ, built by name through a small registry.

Every backbone is a sequence of *stages* (``nn.ModuleList``) applied in order, so that
``freeze_early(n)`` can stop gradients through the first ``n`` of them whatever the architecture.
Each backbone says which input normalisation its first stage expects (``input_mean``/``input_std``
applied to RGB in ``[0, 1]``); :class:`~pose6d_ros.models.PoseNet` applies it.

ResNet-18, MobileNetV3-small and VGG-16 start from random weights (no ImageNet file for them installs
offline). EfficientNet-Lite0 starts from ImageNet weights that ship inside a pinned pip package
(:mod:`pose6d_ros.models.pretrained`: sha256-checked, never downloaded).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from pose6d_ros._checks import check_shape
from pose6d_ros.models.pretrained import efficientnet_lite0_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONES: Dict[str, Callable[..., "Backbone"]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., "Backbone"]], Callable[..., "Backbone"]]:
    """Decorator adding a backbone constructor (keyword-only arguments) to the registry under ``name``."""

    def wrap(builder: Callable[..., "Backbone"]) -> Callable[..., "Backbone"]:
        if name in _BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = builder
        return builder

    return wrap


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> "Backbone":
    """Build the backbone registered as ``name`` with keyword arguments ``kwargs``."""
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; available: {available_backbones()}")
    return _BACKBONES[name](**kwargs)


class Backbone(nn.Module):
    """A trunk made of stages applied in order.

    Args:
        stages: the stages, first to last.
        out_channels: channels of the last stage's output (the "last conv layer" of Eq. 4 and 6).
        stride: total downsampling factor from input to output.
        input_mean, input_std: the normalisation ``(x - mean) / std`` of RGB ``x`` in ``[0, 1]`` that
            the first stage expects (ImageNet's by default; ``0.5, 0.5`` gives ``[-1, 1]``).

    Shape:
        - input: ``(B, 3, S, S)`` image normalised with ``input_mean``/``input_std``
        - output: ``(B, out_channels, S / stride, S / stride)``
    """

    def __init__(self, stages: list[nn.Module], out_channels: int, stride: int,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.out_channels = out_channels
        self.stride = stride
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.frozen_stages = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            check_shape(x, ("B", 3, "H", "W"), "images")
        for stage in self.stages:
            x = stage(x)
        return x

    def freeze_early(self, n_stages: int) -> None:
        """Freeze the first ``n_stages`` stages (0 unfreezes everything): no gradient reaches their
        parameters, and their BatchNorm layers stay in eval mode (running statistics kept) even under
        ``train()``. Why the statistics too: a frozen ImageNet stage fed small synthetic batches would
        otherwise drift away from the features its weights were trained with."""
        if not 0 <= n_stages <= len(self.stages):
            raise ValueError(f"n_stages must be in [0, {len(self.stages)}], got {n_stages}")
        for i, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= n_stages)
        self.frozen_stages = int(n_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for stage in list(self.stages)[: self.frozen_stages]:
            for m in stage.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _random_init_only(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"backbone {name!r} has no ImageNet weights offline (model.pretrained: true); "
                         "efficientnet_lite0 has")


@register_backbone("resnet18")
def resnet18(*, small_input: bool = False, pretrained: bool = False) -> Backbone:
    """ResNet-18 trunk up to ``layer4`` (512 channels, stride 32).

    ``small_input=True`` drops the stem max-pool (stride 16), so a 64 px crop ends on a 4 x 4 map
    rather than 2 x 2: the same map a 128 px crop gets with the pool.
    """
    _random_init_only("resnet18", pretrained)
    net = torchvision.models.resnet18(weights=None)
    stem = [net.conv1, net.bn1, net.relu] + ([] if small_input else [net.maxpool])
    stages = [nn.Sequential(*stem), net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(stages, out_channels=512, stride=16 if small_input else 32)


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(*, small_input: bool = False, pretrained: bool = False) -> Backbone:
    """MobileNetV3-small feature trunk (576 channels, stride 32; 16 with ``small_input``, which
    makes the stem convolution stride 1)."""
    _random_init_only("mobilenet_v3_small", pretrained)
    feats = torchvision.models.mobilenet_v3_small(weights=None).features
    if small_input:
        feats[0][0].stride = (1, 1)
    # Stage boundaries sit at the stride-2 blocks (features 1, 2, 4 and 9).
    stages = [feats[0], feats[1], feats[2:4], feats[4:9], feats[9:]]
    return Backbone(list(stages), out_channels=576, stride=16 if small_input else 32)


@register_backbone("vgg16")
def vgg16(*, small_input: bool = False, pretrained: bool = False) -> Backbone:
    """The paper-faithful BB8 trunk: VGG-16's 13 conv layers, ending at conv5_3 + ReLU (512
    channels). The final max-pool is left out so CIN sees conv5_3 directly (stride 16); with
    ``small_input`` the first max-pool is left out too (stride 8)."""
    _random_init_only("vgg16", pretrained)
    # Only the conv trunk: building the whole VGG-16 would initialise 120M classifier weights for nothing.
    # Initialised as torchvision's VGG does (Kaiming fan-out, zero bias).
    feats = list(make_layers(cfgs["D"], batch_norm=False))
    for m in feats:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    blocks, current = [], []
    for layer in feats:
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(current)
            current = []
        current.append(layer)
    # blocks[0] = block 1 convs; blocks[i>0] = pool + block i+1 convs; `current` = the final pool.
    if small_input:
        blocks[1] = blocks[1][1:]
    stages = [nn.Sequential(*b) for b in blocks]
    return Backbone(stages, out_channels=512, stride=8 if small_input else 16)


class _SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, as ``efficientnet_lite_pytorch``'s dynamic-padding
    conv computes it from each input's size, but without a ``Pad`` on the activations.

    Why: exported with the TorchScript tracer, a ``Pad`` loses the static spatial shape, and the head's
    adaptive pooling then cannot be exported. SAME padding is ``total = (ceil(i/s) - 1) s + k - i``
    split ``(total // 2, total - total // 2)``; when ``total`` is odd (a stride-2 conv on an even size)
    the extra zero goes at the end. That equals a symmetric padding of ``ceil(total / 2)`` with a
    kernel one tap larger whose first row/column is zero, which is what ``forward`` runs. The input
    size is read as plain ints, so an export keeps every spatial size constant.
    """

    @classmethod
    def like(cls, conv: nn.Conv2d) -> "_SamePadConv2d":
        """The same convolution (sharing its parameters) with this padding."""
        if tuple(conv.dilation) != (1, 1):
            raise ValueError("SAME padding here assumes dilation 1")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, 1, conv.groups,
                  bias=conv.bias is not None)
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, lead = [0, 0], [0, 0]
        for d in range(2):
            size, k, s = int(x.shape[2 + d]), self.kernel_size[d], self.stride[d]
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pad[d], lead[d] = (total + 1) // 2, total % 2
        weight = self.weight
        if lead[0]:  # torch.cat, not a pad: both ONNX exporters keep its shape (and fold it to a constant)
            weight = torch.cat([weight.new_zeros(weight.shape[0], weight.shape[1], 1, weight.shape[3]), weight], 2)
        if lead[1]:
            weight = torch.cat([weight.new_zeros(weight.shape[0], weight.shape[1], weight.shape[2], 1), weight], 3)
        return F.conv2d(x, weight, self.bias, self.stride, tuple(pad), 1, self.groups)


def _with_same_padding(module: nn.Module) -> nn.Module:
    """Replace every ``Conv2d`` under ``module`` whose padding is computed in ``forward`` (all of
    ``efficientnet_lite_pytorch``'s with ``image_size=None``) by :class:`_SamePadConv2d`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d:
            setattr(module, name, _SamePadConv2d.like(child))
        else:
            _with_same_padding(child)
    return module


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(*, small_input: bool = False, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """EfficientNet-Lite0 trunk (``efficientnet-lite-pytorch``): stem, 16 MBConv blocks and the
    1x1 head conv, 1280 channels, stride 32 (16 with ``small_input``, which makes the stem stride 1,
    as for MobileNetV3). ReLU6, no squeeze-excitation; TensorFlow "SAME" padding computed from the
    input size (:class:`_SamePadConv2d`), so any crop size works.

    Stages end at each stride: stem + block 0 (/2, 16 ch), blocks 1-2 (/4, 24), blocks 3-4 (/8, 40),
    blocks 5-10 (/16, 112), blocks 11-15 + head (/32, 1280); ``freeze_early(n)`` freezes the first n.
    Stochastic depth (the package's drop-connect) is not used: blocks run as plain modules.

    Args:
        small_input: stem stride 1 (a 64 px crop ends on 4 x 4).
        pretrained: start from the ImageNet weights (sha256-checked, from the pinned package);
            ``False`` gives the same trunk randomly initialised (the package's initialisation).
        weights: another copy of the ``.pth`` file (it must carry the same sha256); default: the
            pinned package's.

    Input: RGB scaled to ``[-1, 1]`` (``input_mean = input_std = 0.5``), the weights' convention.
    """
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: "SAME" padding from each input's size (static padding would fix it at 224 px)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        net.load_state_dict(efficientnet_lite0_state_dict(weights), strict=True)
    if small_input:
        net._conv_stem.stride = (1, 1)
    _with_same_padding(net)
    blocks = list(net._blocks)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(), blocks[0])
    head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
    stages = [stem, nn.Sequential(*blocks[1:3]), nn.Sequential(*blocks[3:5]), nn.Sequential(*blocks[5:11]),
              nn.Sequential(*blocks[11:], head)]
    return Backbone(stages, out_channels=1280, stride=16 if small_input else 32,
                    input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
