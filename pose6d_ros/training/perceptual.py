"""Feature extractors for the perceptual term L_percep (Eq. 3, λ4).

Three sources, chosen by ``selfsup.perceptual.features`` (the log says which one a run uses):

- ``squeezenet`` (the default): ImageNet SqueezeNet 1.1 (from the pinned ``ndf`` package, sha256-checked
  and converted once, :mod:`pose6d_ros.models.pretrained`) tapped at relu1, fire3, fire5 and fire9: an
  LPIPS-style distance on ImageNet features, as the paper's ImageNet VGG gives, that installs offline;
- ``vgg16``: torchvision VGG-16 whose ``state_dict`` is loaded from ``vgg_weights`` (the paper's
  choice; no file ships, so the user supplies it). Chosen too when ``features`` is null and
  ``vgg_weights`` is set, as before ``features`` existed;
- ``phi_early``: a frozen copy of the first stages of the synthetic-trained Φ (its early layers learned
  edges and colours on the source domain). The fallback every figure before SqueezeNet was measured
  with; the recipes behind those figures pin it.

All are frozen and return a list of ``(B, C_l, H_l, W_l)`` feature maps for
:func:`pose6d_ros.training.losses.perceptual_distance` (which unit-normalises them across channels).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from pose6d_ros._checks import check_shape
from pose6d_ros.models.pretrained import CAFFE_MEAN_BGR, squeezenet1_1
from pose6d_ros.training.config import PerceptualSection

__all__ = ["FeatureExtractor", "VGGFeatures", "PhiEarlyFeatures", "SqueezeNetFeatures", "SQUEEZENET_TAPS",
           "PERCEPTUAL_FEATURES", "build_perceptual"]

log = logging.getLogger("pose6d_ros.training")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: SqueezeNet 1.1 layer name -> index into torchvision ``squeezenet1_1().features`` (LPIPS's slices end there)
SQUEEZENET_TAPS = {"relu1": 1, "fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10,
                   "fire8": 11, "fire9": 12}
#: accepted values of ``selfsup.perceptual.features``
PERCEPTUAL_FEATURES = ("squeezenet", "vgg16", "phi_early")


class FeatureExtractor(nn.Module):
    """Frozen trunk that returns the outputs of selected layers.

    Args:
        layers: the layers, applied in order.
        taps: indices into ``layers`` whose outputs are returned.
        name: for logs (which extractor is in use).
        mean, std: input normalisation ``(x - mean) / std`` the first layer expects (ImageNet's by
            default), in the channel order the layers take.
        bgr: the layers take BGR: the RGB input's channels are reversed before normalising.

    Shape:
        - images: ``(B, 3, H, W)`` RGB in ``[0, 1]``
        - output: list of ``(B, C_l, H_l, W_l)``, one per tap
    """

    def __init__(self, layers: Sequence[nn.Module], taps: Sequence[int], name: str,
                 mean: Sequence[float] = _IMAGENET_MEAN, std: Sequence[float] = _IMAGENET_STD, bgr: bool = False) -> None:
        super().__init__()
        if not taps or max(taps) >= len(layers) or min(taps) < 0:
            raise ValueError(f"perceptual taps {list(taps)} out of range for {len(layers)} layers")
        self.layers = nn.ModuleList(list(layers)[: max(taps) + 1])
        self.taps = sorted(set(int(t) for t in taps))
        self.name = name
        self.bgr = bool(bgr)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # always frozen, BN included

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        check_shape(images, ("B", 3, "H", "W"), "images")
        x = ((images.flip(1) if self.bgr else images) - self.mean) / self.std
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


def SqueezeNetFeatures(layers: Sequence[str] = ("relu1", "fire3", "fire5", "fire9"), *,
                       source: Optional[str | Path] = None, cache: Optional[str | Path] = None) -> FeatureExtractor:
    """ImageNet SqueezeNet 1.1 features (the default perceptual space), frozen.

    Args:
        layers: names from :data:`SQUEEZENET_TAPS` (default relu1, fire3, fire5, fire9: on photos, a
            2-px shift scores well below a different photo; ``pretrained-weights`` notes).
        source, cache: the ndf weights file and the cache folder of the converted weights (defaults:
            the pinned package and ``${XDG_CACHE_HOME:-~/.cache}/pose6d_ros``), see
            :func:`pose6d_ros.models.pretrained.squeezenet1_1_state_dict`.

    Input convention handled inside: the weights are Caffe's (BGR, ``[0, 255]``, minus the BGR mean).
    A 64 px crop gives maps of 31, 15, 7 and 3 px at the four default layers.
    """
    unknown = [n for n in layers if n not in SQUEEZENET_TAPS]
    if not layers or unknown:
        raise ValueError(f"selfsup.perceptual.squeezenet_layers: unknown {unknown or 'empty list'}; "
                         f"known: {list(SQUEEZENET_TAPS)}")
    net = squeezenet1_1(source, cache)
    log.info("perceptual loss: ImageNet SqueezeNet 1.1 features at %s", ", ".join(layers))
    return FeatureExtractor(list(net.features), [SQUEEZENET_TAPS[n] for n in layers],
                            name=f"squeezenet1_1:{'+'.join(layers)}", mean=[m / 255.0 for m in CAFFE_MEAN_BGR],
                            std=(1 / 255.0,) * 3, bgr=True)


def PhiEarlyFeatures(model: nn.Module, num_stages: int = 2) -> FeatureExtractor:
    """Fallback: a frozen copy of the first ``num_stages`` backbone stages of Φ, each one tapped.

    ``model`` must expose ``backbone.stages`` (``pose6d_ros.models.PoseNet`` does). Copied, so
    later training of Φ does not move the perceptual metric. Inputs are normalised as Φ's own
    (``model.mean``/``model.std``: ImageNet's, or ``[-1, 1]`` for ``efficientnet_lite0``).
    """
    inner = getattr(model, "module", model)
    stages = getattr(getattr(inner, "backbone", None), "stages", None)
    if stages is None:
        raise TypeError("PhiEarlyFeatures: model has no backbone.stages")
    if not 1 <= num_stages <= len(stages):
        raise ValueError(f"PhiEarlyFeatures: num_stages must be in [1, {len(stages)}], got {num_stages}")
    layers = [copy.deepcopy(s) for s in list(stages)[:num_stages]]
    mean = tuple(getattr(inner, "mean", torch.tensor(_IMAGENET_MEAN)).flatten().tolist())
    std = tuple(getattr(inner, "std", torch.tensor(_IMAGENET_STD)).flatten().tolist())
    log.info("perceptual loss: fallback, frozen first %d stages of the synthetic-trained Φ", num_stages)
    return FeatureExtractor(layers, list(range(num_stages)), name=f"phi_early:{num_stages}", mean=mean, std=std)


def build_perceptual(cfg: PerceptualSection, model: Optional[nn.Module]) -> FeatureExtractor:
    """From the ``selfsup.perceptual`` recipe section:

    - ``features``: ``squeezenet`` | ``vgg16`` | ``phi_early``; null = ``vgg16`` when ``vgg_weights`` is
      set, else ``squeezenet``;
    - ``squeezenet_layers``: SqueezeNet taps (default relu1, fire3, fire5, fire9);
    - ``vgg_weights`` (path), ``vgg_layers``: for ``vgg16``;
    - ``phi_layers``: number of Φ stages for ``phi_early`` (default 2).
    """
    kind = cfg.features
    path = cfg.vgg_weights
    if kind is None:
        kind = "vgg16" if path else "squeezenet"
    if kind not in PERCEPTUAL_FEATURES:
        raise ValueError(f"selfsup.perceptual.features must be one of {list(PERCEPTUAL_FEATURES)}, got {kind!r}")
    if kind == "vgg16":
        if not path:
            raise ValueError("selfsup.perceptual.features is vgg16 but selfsup.perceptual.vgg_weights names no file")
        return VGGFeatures(path, cfg.vgg_layers)
    if kind == "squeezenet":
        return SqueezeNetFeatures(cfg.squeezenet_layers)
    if model is None:
        raise ValueError("selfsup.perceptual.features is phi_early but there is no model for it")
    return PhiEarlyFeatures(model, cfg.phi_layers)
