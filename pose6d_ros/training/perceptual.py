"""Feature extractors for the perceptual term L_percep (Eq. 3, λ4).

Two sources, chosen by the config key ``selfsup.perceptual.vgg_weights``:

- a path: torchvision VGG-16 (``weights=None``) whose ``state_dict`` is loaded from that file
  (the paper's choice: an ImageNet-pretrained VGG; we cannot download one, so the user supplies it);
- ``None``: the documented fallback, a frozen copy of the first stages of the synthetic-trained Φ
  (its early layers learned edges and colours on the source domain, which is what an LPIPS-style
  comparison of a render with a masked real crop needs).

Both are frozen and return a list of ``(B, C_l, H_l, W_l)`` feature maps for
:func:`pose6d_ros.training.losses.perceptual_distance`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from pose6d_ros._checks import check_shape

__all__ = ["FeatureExtractor", "VGGFeatures", "PhiEarlyFeatures", "build_perceptual"]

log = logging.getLogger("pose6d_ros.training")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Frozen trunk that returns the outputs of selected layers.

    Args:
        layers: the layers, applied in order.
        taps: indices into ``layers`` whose outputs are returned.
        name: for logs (which extractor is in use).

    Shape:
        - images: ``(B, 3, H, W)`` RGB in ``[0, 1]``
        - output: list of ``(B, C_l, H_l, W_l)``, one per tap
    """

    def __init__(self, layers: Sequence[nn.Module], taps: Sequence[int], name: str) -> None:
        super().__init__()
        if not taps or max(taps) >= len(layers) or min(taps) < 0:
            raise ValueError(f"perceptual taps {list(taps)} out of range for {len(layers)} layers")
        self.layers = nn.ModuleList(list(layers)[: max(taps) + 1])
        self.taps = sorted(set(int(t) for t in taps))
        self.name = name
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # always frozen, BN included

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        check_shape(images, ("B", 3, "H", "W"), "images")
        x = (images - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def VGGFeatures(weights_path: str | Path, taps: Sequence[int] = (3, 8, 15)) -> FeatureExtractor:
    """VGG-16 ``features`` tapped (by default) at relu1_2, relu2_2, relu3_3 (LPIPS's first three).

    Args:
        weights_path: a torchvision ``vgg16`` state dict (full model or ``features.*`` only).
        taps: indices into ``vgg16().features``.

    Raises:
        FileNotFoundError / RuntimeError naming ``weights_path`` when it is missing or unusable.
    """
    import torchvision

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual VGG-16 weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"perceptual VGG-16 weights {path} could not be read: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = torchvision.models.vgg16(weights=None)
    if not isinstance(state, dict):
        raise RuntimeError(f"perceptual VGG-16 weights {path}: expected a state dict, got {type(state).__name__}")
    features_only = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        if features_only:
            net.features.load_state_dict(features_only, strict=True)
        else:
            net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"perceptual VGG-16 weights {path} do not fit torchvision vgg16: {e}") from e
    log.info("perceptual loss: VGG-16 features from %s, taps %s", path, list(taps))
    return FeatureExtractor(list(net.features), taps, name=f"vgg16:{path}")


def PhiEarlyFeatures(model: nn.Module, num_stages: int = 2) -> FeatureExtractor:
    """Fallback: a frozen copy of the first ``num_stages`` backbone stages of Φ, each one tapped.

    ``model`` must expose ``backbone.stages`` (``pose6d_ros.models.PoseNet`` does). Copied, so
    later training of Φ does not move the perceptual metric.
    """
    inner = getattr(model, "module", model)
    stages = getattr(getattr(inner, "backbone", None), "stages", None)
    if stages is None:
        raise TypeError("PhiEarlyFeatures: model has no backbone.stages")
    if not 1 <= num_stages <= len(stages):
        raise ValueError(f"PhiEarlyFeatures: num_stages must be in [1, {len(stages)}], got {num_stages}")
    layers = [copy.deepcopy(s) for s in list(stages)[:num_stages]]
    log.info("perceptual loss: fallback, frozen first %d stages of the synthetic-trained Φ", num_stages)
    return FeatureExtractor(layers, list(range(num_stages)), name=f"phi_early:{num_stages}")


def build_perceptual(cfg: dict, model: Optional[nn.Module]) -> FeatureExtractor:
    """From ``selfsup.perceptual`` config: ``vgg_weights`` (path or None), ``vgg_layers``,
    ``phi_layers`` (number of Φ stages for the fallback; default 2)."""
    path = cfg.get("vgg_weights")
    if path:
        return VGGFeatures(path, cfg.get("vgg_layers") or (3, 8, 15))
    if model is None:
        raise ValueError("perceptual: no vgg_weights and no model for the Φ fallback")
    return PhiEarlyFeatures(model, int(cfg.get("phi_layers") or 2))
