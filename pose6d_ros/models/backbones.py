"""Convolutional trunks for the pose network Φ, built by name through a small registry.

Every backbone is a sequence of *stages* (``nn.ModuleList``) applied in order, so that
``freeze_early(n)`` can stop gradients through the first ``n`` of them whatever the architecture.
No pretrained weights are ever loaded (nothing is downloaded at run time).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from pose6d_ros._checks import check_shape

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

    Shape:
        - input: ``(B, 3, S, S)`` ImageNet-normalised image
        - output: ``(B, out_channels, S / stride, S / stride)``
    """

    def __init__(self, stages: list[nn.Module], out_channels: int, stride: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            check_shape(x, ("B", 3, "H", "W"), "images")
        for stage in self.stages:
            x = stage(x)
        return x

    def freeze_early(self, n_stages: int) -> None:
        """Stop gradients through the first ``n_stages`` stages (0 unfreezes everything)."""
        if not 0 <= n_stages <= len(self.stages):
            raise ValueError(f"n_stages must be in [0, {len(self.stages)}], got {n_stages}")
        for i, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= n_stages)


@register_backbone("resnet18")
def resnet18(*, small_input: bool = False) -> Backbone:
    """ResNet-18 trunk up to ``layer4`` (512 channels, stride 32).

    ``small_input=True`` drops the stem max-pool (stride 16), so a 64 px crop ends on a 4 x 4 map
    rather than 2 x 2: the same map a 128 px crop gets with the pool.
    """
    net = torchvision.models.resnet18(weights=None)
    stem = [net.conv1, net.bn1, net.relu] + ([] if small_input else [net.maxpool])
    stages = [nn.Sequential(*stem), net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(stages, out_channels=512, stride=16 if small_input else 32)


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(*, small_input: bool = False) -> Backbone:
    """MobileNetV3-small feature trunk (576 channels, stride 32; 16 with ``small_input``, which
    makes the stem convolution stride 1)."""
    feats = torchvision.models.mobilenet_v3_small(weights=None).features
    if small_input:
        feats[0][0].stride = (1, 1)
    # Stage boundaries sit at the stride-2 blocks (features 1, 2, 4 and 9).
    stages = [feats[0], feats[1], feats[2:4], feats[4:9], feats[9:]]
    return Backbone(list(stages), out_channels=576, stride=16 if small_input else 32)


@register_backbone("vgg16")
def vgg16(*, small_input: bool = False) -> Backbone:
    """The paper-faithful BB8 trunk: VGG-16's 13 conv layers, ending at conv5_3 + ReLU (512
    channels). The final max-pool is left out so CIN sees conv5_3 directly (stride 16); with
    ``small_input`` the first max-pool is left out too (stride 8)."""
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
