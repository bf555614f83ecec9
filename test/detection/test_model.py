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
