"""The ``detect`` CLI on a split written by ``import_bag`` from a real rosbag2: the file is valid BOP
challenge detection format (checked with the json module, not our reader, and against the shared
LM-O detections file when present), reads back with ``load_detections``, and its boxes are the
detector's own (pixel edges -> BOP ``x, y, w, h`` and back)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pose6d_ros.data.bop import load_detections
from pose6d_ros.detection.detect import main
from pose6d_ros.detection.infer import Detector, bop_box_to_edges

ROOT = Path(__file__).resolve().parents[2]
SHARED_DETS = ROOT.parent / "shared" / "data" / "lmo-real" / "unlabeled" / "detections_bop.json"
KEYS = {"scene_id", "image_id", "category_id", "bbox", "score", "time"}  # the BOP challenge's detection entry
H, W = 96, 128


@pytest.fixture(scope="module")
def bag_split(tmp_path_factory) -> Path:
    """Three 96x128 frames in a sqlite3 rosbag2, imported by ``import_bag`` (the user's first step)."""
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from pose6d_ros.data.bag import main as import_bag

    ts = get_typestore(Stores.LATEST)
    T = ts.types
    tmp = tmp_path_factory.mktemp("bag")

    def header(ns):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="cam")

    info = T["sensor_msgs/msg/CameraInfo"](
        header=header(10), height=H, width=W, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([100.0, 0, 63.5, 0, 100.0, 47.5, 0, 0, 1]), r=np.eye(3).reshape(-1), p=np.zeros(12),
        binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    rng = np.random.default_rng(0)
    with Writer(tmp / "bag", version=9) as w:
        ci = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        im = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=ts)
        w.write(ci, 10, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
        for i in range(3):
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            rgb[20:70, 30:90] = (200, 40 * i, 30)  # a block for the detector to look at
            msg = T["sensor_msgs/msg/Image"](header=header(100 + i), height=H, width=W, encoding="rgb8",
                                             is_bigendian=0, step=3 * W, data=rgb.reshape(-1))
            w.write(im, 100 + i, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    out = tmp / "split"
    assert import_bag(["--bag", str(tmp / "bag"), "--image-topic", "/cam/image", "--camera-info-topic",
                       "/cam/camera_info", "--out", str(out), "--scene-id", "3"]) == 0
    return out


def _images(split: Path) -> dict:
    """``{(scene_id, im_id): (H, W)}`` of the split's rgb/ files, from the file names."""
    return {(int(p.parent.parent.name), int(p.stem)): cv2.imread(str(p)).shape[:2]
            for p in sorted(split.glob("*/rgb/*.png"))}


def _check_bop_format(entries: list, images: dict, obj_ids: set, min_score: float) -> None:
    """The BOP challenge detection format, checked entry by entry with plain Python."""
    assert isinstance(entries, list) and entries
    for e in entries:
        assert set(e) == KEYS, e
        for k in ("scene_id", "image_id", "category_id"):
            assert type(e[k]) is int, (k, e)
        assert (e["scene_id"], e["image_id"]) in images and e["category_id"] in obj_ids
        x, y, w, h = e["bbox"]
        assert len(e["bbox"]) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in e["bbox"])
        im_h, im_w = images[(e["scene_id"], e["image_id"])]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im_w + 1e-6 and y + h <= im_h + 1e-6, e
        assert isinstance(e["score"], float) and min_score <= e["score"] <= 1
        assert isinstance(e["time"], float) and 0 < e["time"] < 60
    per_image = {}
    for e in entries:  # one time per image: the detector's seconds on it
        assert per_image.setdefault((e["scene_id"], e["image_id"]), e["time"]) == e["time"]


def test_detect_writes_bop_detections_that_read_back(bag_split, tiny_checkpoint, objects_yaml, registry, tmp_path,
                                                     capsys):
    out = tmp_path / "dets.json"
    assert main(["--model", str(tiny_checkpoint), "--objects", str(objects_yaml), "--split", str(bag_split),
                 "--out", str(out), "--min-score", "0", "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("wrote ") and str(out) in line and "in 3 images" in line
    entries = json.loads(out.read_text())
    images = _images(bag_split)
    assert set(images) == {(3, 0), (3, 1), (3, 2)}
    _check_bop_format(entries, images, set(registry.ids), 0.0)
    if SHARED_DETS.is_file():  # the same structure as the LM-O file the issue names
        shared = json.loads(SHARED_DETS.read_text())
        assert {frozenset(e) for e in shared} == {frozenset(KEYS)}
        assert all(type(e["category_id"]) is int and len(e["bbox"]) == 4 for e in shared[:20])

    recs = load_detections(out)
    assert [(r.scene_id, r.im_id, r.obj_id, r.score, list(r.bbox), r.time) for r in recs] == \
        [(e["scene_id"], e["image_id"], e["category_id"], e["score"], e["bbox"], e["time"]) for e in entries]

    # the boxes are the detector's: run it on image (3, 1) here and map the file's boxes back to edges
    from pose6d_ros.data.bop import load_rgb

    det = Detector.from_file(tiny_checkpoint, min_score=0.0)
    mine = det.detect(load_rgb(bag_split, 3, 1))
    theirs = [r for r in recs if (r.scene_id, r.im_id) == (3, 1)]
    assert len(mine) == len(theirs) > 0
    for d, r in zip(mine, theirs):
        assert r.obj_id == registry.get(d.class_id).id and r.score == pytest.approx(d.score, abs=1e-6)
        clipped = np.clip(d.box, -0.5, [W - 0.5, H - 0.5] * 2)  # the file's boxes are inside the image
        np.testing.assert_allclose(bop_box_to_edges(r.bbox), clipped, atol=1e-4)


def test_detect_max_per_class_limit_and_min_score(bag_split, tiny_checkpoint, objects_yaml, tmp_path):
    full, capped = tmp_path / "full.json", tmp_path / "capped.json"
    common = ["--model", str(tiny_checkpoint), "--objects", str(objects_yaml), "--split", str(bag_split),
              "--threads", "1", "--no-progress"]
    assert main(common + ["--out", str(full), "--min-score", "0"]) == 0
    assert main(common + ["--out", str(capped), "--min-score", "0.01", "--max-per-class", "1", "--limit", "2"]) == 0
    all_recs, kept = load_detections(full), load_detections(capped)
    assert {(r.scene_id, r.im_id) for r in kept} <= {(3, 0), (3, 1)}
    best = {}
    for r in all_recs:
        if r.score >= 0.01:
            k = (r.scene_id, r.im_id, r.obj_id)
            best[k] = max(best.get(k, -1.0), r.score)
    want = {k: s for k, s in best.items() if k[:2] in {(3, 0), (3, 1)}}
    got = {(r.scene_id, r.im_id, r.obj_id): r.score for r in kept}
    assert len(got) == len(kept) and got.keys() == want.keys()  # one per image and class, every class kept
    assert all(got[k] == pytest.approx(want[k], abs=1e-6) for k in got)


@pytest.mark.parametrize("case", ["model", "empty_split", "bad_limit"])
def test_detect_bad_input_is_one_line(case, bag_split, tiny_checkpoint, objects_yaml, tmp_path, capsys):
    model, split = tiny_checkpoint, bag_split
    extra = []
    if case == "model":
        model = tmp_path / "missing.pt"
    elif case == "empty_split":
        split = tmp_path / "empty"
        split.mkdir()
    else:
        extra = ["--limit", "0"]
    out = tmp_path / "dets.json"
    assert main(["--model", str(model), "--objects", str(objects_yaml), "--split", str(split), "--out", str(out),
                 "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detect: error: ")
    assert {"model": str(model), "empty_split": str(split), "bad_limit": "--limit"}[case] in err[0]
    assert not out.exists()


def test_bag_then_detect_then_train_selfsup(bag_split, tiny_checkpoint, objects_yaml, tmp_path, caplog):
    """The user's chain of issue 13: import_bag -> detect -> train_selfsup on the detector's boxes (the
    object trained is the one the tiny detector reports most; 2 steps)."""
    import torch
    import yaml

    from pose6d_ros.training.selfsup import main as selfsup_main

    dets = tmp_path / "dets.json"
    assert main(["--model", str(tiny_checkpoint), "--objects", str(objects_yaml), "--split", str(bag_split),
                 "--out", str(dets), "--min-score", "0", "--max-per-class", "1", "--threads", "1",
                 "--no-progress"]) == 0
    ids = [e["category_id"] for e in json.loads(dets.read_text())]
    obj = max(set(ids), key=ids.count)
    recipe = {"seed": 0, "threads": 1, "output_dir": str(tmp_path / "run"),
              "data": {"train_split": str(bag_split), "detections": str(dets), "registry": str(objects_yaml),
                       "objects": [obj], "crop_size": 32, "batch_size": 2, "synthetic_cache_dir": None,
                       "diag_per_object": 0},
              "model": {"backbone": "mobilenet_v3_small", "head_pool": 2}, "optim": {"max_steps": 2},
              "init": {"synthetic": {"steps": 0}, "adapt_bn_epochs": 0, "freeze_early_steps": 0},
              "selfsup": {"use_sup_synthetic": False, "use_percep": False, "render": {"max_faces": 300}},
              "eval": {"final_test": False}, "log": {"tensorboard": False, "progress": False},
              "checkpoint": {"period": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    caplog.set_level("INFO", logger="pose6d_ros.training")
    threads = torch.get_num_threads()
    try:
        assert selfsup_main(["-c", str(tmp_path / "recipe.yaml")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"self-supervised: {ids.count(obj)} unlabeled crops" in caplog.text
    assert (tmp_path / "run" / "model.pt").is_file()
