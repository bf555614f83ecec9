"""``train_selfsup`` on the user's own unlabeled images: ``data.train_split`` (a folder as ``import_bag``
writes it, no suite around it) and ``data.detections`` (a BOP detections file as ``detect`` writes it).
The crops are cut around the file's boxes (checked through the crop intrinsics, by hand), the run
trains, and a missing or mismatched file is one line naming the key and the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pose6d_ros.data.bop import CameraRecord, DetectionRecord, save_detections, save_rgb, save_scene_camera
from pose6d_ros.training.selfsup import main as selfsup_main

F, CX, CY, S, PAD = 500.0, 160.0, 120.0, 32, 1.5


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> tuple:
    """An imported-bag-like split (scene 3: rgb/ and scene_camera.json only) and a detections file with
    boxes of object 1 (two in image 1) and of object 2, which the runs below do not train."""
    root = tmp_path_factory.mktemp("bag")
    split = root / "split"
    rng = np.random.default_rng(0)
    for i in range(3):
        save_rgb(split, 3, i, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    save_scene_camera(split / "000003" / "scene_camera.json",
                      {i: CameraRecord(K=np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]])) for i in range(3)})
    dets = [DetectionRecord(3, 0, 1, 0.9, (100.5, 80.25, 60.0, 40.0), 0.05),
            DetectionRecord(3, 1, 1, 0.8, (20.0, 30.0, 50.0, 70.0), 0.05),
            DetectionRecord(3, 1, 2, 0.7, (150.0, 60.0, 30.0, 30.0), 0.05),
            DetectionRecord(3, 1, 1, 0.6, (200.0, 100.0, 44.0, 44.0), 0.05),
            DetectionRecord(3, 2, 1, 0.5, (0.0, 0.0, 90.0, 80.0), 0.05)]
    save_detections(root / "dets.json", dets)
    return split, root / "dets.json"


def _recipe(tmp: Path, split: Path, dets: Path, **data) -> dict:
    return {"seed": 0, "threads": 1, "output_dir": str(tmp / "run"),
            "data": {"train_split": str(split), "detections": str(dets), "objects": [1], "crop_size": S,
                     "crop_padding": PAD, "batch_size": 2, "synthetic_batch_size": 2, "synthetic_per_object": 2,
                     "synthetic_cache_dir": None, "diag_per_object": 0, "box_jitter": None, **data},
            "model": {"backbone": "mobilenet_v3_small", "head_pool": 2},
            "optim": {"lr": 1e-4, "max_steps": 2},
            "init": {"synthetic": {"steps": 0}, "adapt_bn_epochs": 0, "freeze_early_steps": 0},
            "selfsup": {"use_sup_synthetic": False, "use_percep": False, "render": {"max_faces": 300}},
            "eval": {"final_test": False},
            "log": {"tensorboard": False, "progress": False}, "checkpoint": {"period": 0}}


def test_crops_are_cut_around_the_files_boxes(bag, tmp_path):
    from pose6d_ros.training.runner import Run

    split, dets = bag
    threads = torch.get_num_threads()
    try:
        crops = Run(_recipe(tmp_path, split, dets), "selfsup").target_crops(labelled=False)
    finally:
        torch.set_num_threads(threads)
    want = [e for e in json.loads(dets.read_text()) if e["category_id"] == 1]  # object 2 is not in the run
    assert [(it.scene_id, it.im_id, it.obj_id, list(it.bbox)) for it in crops.items] == \
        [(e["scene_id"], e["image_id"], e["category_id"], e["bbox"]) for e in want]
    # each crop's intrinsics, by hand from its box: a square window of side PAD x (longer side + 1) (the box
    # spans the pixel centres x .. x + w) around the box centre, resampled to S pixels
    K = crops.batch(range(len(want)), jitter=False, with_labels=False)["K"].double()
    for k, e in enumerate(want):
        x, y, w, h = e["bbox"]
        side = PAD * (max(w, h) + 1)
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        s = S / side
        expect = [[F * s, 0, (CX - x0) * s - 0.5], [0, F * s, (CY - y0) * s - 0.5], [0, 0, 1]]
        np.testing.assert_allclose(K[k].numpy(), expect, rtol=1e-5, atol=1e-4)


def test_train_selfsup_trains_on_a_detections_file_without_a_suite(bag, tmp_path, caplog):
    caplog.set_level("INFO", logger="pose6d_ros.training")
    split, dets = bag
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, split, dets)))
    threads = torch.get_num_threads()
    try:
        assert selfsup_main(["-c", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["steps"] == 2 and Path(res["model"]).is_file()
    hist = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["extra"]["history"]
    assert len(hist) == 2 and all(np.isfinite(h["total"]) for h in hist)
    assert "self-supervised: 4 unlabeled crops" in caplog.text  # the file's 4 boxes of object 1


@pytest.mark.parametrize("case", ["missing_file", "empty_split", "other_image", "no_root"])
def test_bad_detections_or_split_is_one_line_naming_the_key(case, bag, tmp_path, capsys):
    split, dets = bag
    data, want = {}, ()
    if case == "missing_file":
        data = {"detections": str(tmp_path / "nope.json")}
        want = ("'data.detections'", str(tmp_path / "nope.json"))
    elif case == "empty_split":
        (tmp_path / "empty").mkdir()
        data = {"train_split": str(tmp_path / "empty")}
        want = ("'data.train_split'", str(tmp_path / "empty"))
    elif case == "other_image":
        save_detections(tmp_path / "other.json", [DetectionRecord(3, 7, 1, 0.9, (10.0, 10.0, 20.0, 20.0))])
        data = {"detections": str(tmp_path / "other.json")}
        want = ("scene 3 image 7", str(tmp_path / "other.json"), str(split))
    else:  # the images without their boxes: the suite's train_detections.json would be needed
        data = {"detections": None}
        want = ("'data.root' is required",)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, split, dets, **data)))
    threads = torch.get_num_threads()
    try:
        assert selfsup_main(["-c", str(path)]) == 2
    finally:
        torch.set_num_threads(threads)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train_selfsup: ")]
    assert len(err) == 1 and err[0].startswith("train_selfsup: error: ")
    assert all(w in err[0] for w in want), err[0]
    assert not (tmp_path / "run" / "model.pt").exists()
