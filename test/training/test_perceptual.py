"""L_percep's feature extractors: the ImageNet SqueezeNet default behaves as a perceptual metric on
real photos at the training crop size, and the recipe section picks the extractor (and the log says
which). References: photos from ``skimage.data`` and their shifted / exchanged versions."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pose6d_ros.models import PoseNet
from pose6d_ros.training.losses import perceptual_distance
from pose6d_ros.training.perceptual import PhiEarlyFeatures, SqueezeNetFeatures, build_perceptual


def _section(**given):
    """A ``selfsup.perceptual`` section with every key (defaults as the recipe's)."""
    keys = dict(features=None, squeezenet_layers=("relu1", "fire3", "fire5", "fire9"), vgg_weights=None,
                vgg_layers=(3, 8, 15), phi_layers=2)
    return SimpleNamespace(**{**keys, **given})


def _window(name: str, size: int, margin: int = 4) -> torch.Tensor:
    """Centre square of photo ``name`` resized to ``size + margin`` px: ``(1, 3, S+m, S+m)`` in [0, 1]."""
    import skimage.data

    im = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = im.shape[-2:]
    s = min(h, w)
    im = im[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(im, size=(size + margin,) * 2, mode="bilinear", antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory):
    return SqueezeNetFeatures(cache=tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("photo, other", [("coffee", "chelsea"), ("chelsea", "astronaut"), ("rocket", "coffee")])
def test_distance_ranks_identical_below_a_2px_shift_below_another_photo(squeezenet, photo, other, size):
    a, b = _window(photo, size), _window(other, size)
    crop = a[..., 2:2 + size, 2:2 + size]
    shifted = a[..., 2:2 + size, 4:4 + size]  # the same photo, 2 px to the side
    different = b[..., 2:2 + size, 2:2 + size]
    with torch.no_grad():
        f = squeezenet(crop)
        same, shift, far = (perceptual_distance(f, squeezenet(x)).item() for x in (crop, shifted, different))
    assert same == 0.0
    assert 0 < shift < far / 2, (shift, far)


def test_features_are_frozen_and_shaped_for_a_64px_crop(squeezenet):
    assert all(not p.requires_grad for p in squeezenet.parameters())
    squeezenet.train()
    assert not any(m.training for m in squeezenet.modules())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    feats = squeezenet(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 31, 31), (128, 15, 15), (256, 7, 7), (512, 3, 3)]
    perceptual_distance(feats, squeezenet(torch.rand(2, 3, 64, 64))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the loss still reaches the render


def test_default_is_squeezenet_and_the_log_says_which(caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    net = PoseNet(num_objects=1, crop_size=64)
    with caplog.at_level(logging.INFO, logger="pose6d_ros.training"):
        default = build_perceptual(_section(), net)
        phi = build_perceptual(_section(features="phi_early", phi_layers=2), net)
    assert default.name.startswith("squeezenet1_1") and phi.name == "phi_early:2"
    assert "ImageNet SqueezeNet 1.1 features at relu1, fire3, fire5, fire9" in caplog.text
    assert "fallback, frozen first 2 stages" in caplog.text
    assert list(tmp_path.glob("pose6d_ros/squeezenet1_1-*.pt"))  # converted into the cache folder


def test_bad_choices_are_one_line_naming_the_key(tmp_path):
    net = PoseNet(num_objects=1, crop_size=64)
    with pytest.raises(ValueError, match="selfsup.perceptual.features must be one of"):
        build_perceptual(_section(features="alexnet"), net)
    with pytest.raises(ValueError, match="vgg_weights names no file"):
        build_perceptual(_section(features="vgg16"), net)
    with pytest.raises(ValueError, match="squeezenet_layers: unknown \\['fire10'\\]"):
        build_perceptual(_section(squeezenet_layers=("relu1", "fire10")), net)
    with pytest.raises(FileNotFoundError, match="nope.pth"):  # vgg_weights alone still selects VGG-16
        build_perceptual(_section(vgg_weights=str(tmp_path / "nope.pth")), net)


def test_phi_early_uses_phi_s_own_input_convention():
    """With the EfficientNet trunk, Φ's early stages expect [-1, 1], not ImageNet mean/std."""
    net = PoseNet(backbone="efficientnet_lite0", num_objects=1, crop_size=64, pretrained=False).eval()
    feats = PhiEarlyFeatures(net, 1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(feats(x)[0], net.backbone.stages[0](x * 2 - 1))
