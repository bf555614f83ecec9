"""benchmarks/selfsup_lmo_boxes.py: the box comparison against hand-computed IoUs, the LM-O val counting
(>= 30% visible) against scene_gt_info.json read directly, and the whole benchmark in smoke mode on the
real LM-O images (skipped where ../shared/data/lmo-real is absent) with a 2-step detector."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pose6d_ros.data.bop import DetectionRecord, save_detections

ROOT = Path(__file__).resolve().parents[2]
LMO = next((p for p in (ROOT.parent / "shared" / "data" / "lmo-real", Path("/work/shared/data/lmo-real"))
            if p.is_dir()), ROOT.parent / "shared" / "data" / "lmo-real")  # as the benchmark's default
needs_lmo = pytest.mark.skipif(not (LMO / "models" / "models_info.json").is_file(), reason=f"{LMO} not present")


def _bench():
    spec = importlib.util.spec_from_file_location("selfsup_lmo_boxes", ROOT / "benchmarks" / "selfsup_lmo_boxes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_box_comparison_matches_hand_computed_ious(tmp_path):
    # BOP boxes (x, y, w, h) span pixel edges x - 0.5 .. x + w - 0.5: a shift of s px along x of a 20x20
    # box leaves an overlap of (20 - s) x 20, union 800 - overlap
    given = [DetectionRecord(2, 0, 1, 1.0, (10, 10, 20, 20)),   # found: detect shifted 5 px, IoU 300/500
             DetectionRecord(2, 1, 1, 1.0, (10, 10, 20, 20)),   # missed: shifted 10 px, IoU 200/600
             DetectionRecord(2, 2, 5, 1.0, (50, 50, 20, 20))]   # missed: only another object's box is there
    detect = [DetectionRecord(2, 0, 1, 0.9, (15, 10, 20, 20)),
              DetectionRecord(2, 1, 1, 0.9, (20, 10, 20, 20)),
              DetectionRecord(2, 2, 1, 0.9, (50, 50, 20, 20)),  # right place, wrong object: matches nothing
              DetectionRecord(2, 3, 5, 0.9, (50, 50, 20, 20))]  # an image without a given can box
    save_detections(tmp_path / "given.json", given)
    save_detections(tmp_path / "detect.json", detect)
    res = _bench().compare_boxes(tmp_path / "given.json", tmp_path / "detect.json", [1, 5])["objects"]
    ape, can, both = res["ape"], res["can"], res["all"]
    assert (ape["given"], ape["detect"], can["given"], can["detect"]) == (2, 3, 1, 1)
    assert ape["recall"] == pytest.approx(50.0) and ape["precision"] == pytest.approx(100.0 / 3)
    assert ape["mean_best_iou"] == pytest.approx((300 / 500 + 200 / 600) / 2)
    assert can["recall"] == 0.0 and can["precision"] == 0.0 and can["mean_best_iou"] == 0.0
    assert both["recall"] == pytest.approx(100.0 / 3) and both["precision"] == pytest.approx(25.0)


def _hand_counts(split: Path, min_visib: float) -> Counter:
    gt = json.loads((split / "000002" / "scene_gt.json").read_text())
    info = json.loads((split / "000002" / "scene_gt_info.json").read_text())
    return Counter(g["obj_id"] for im in gt for g, i in zip(gt[im], info[im])
                   if i["visib_fract"] >= min_visib and i["bbox_visib"][2] > 0)


@needs_lmo
def test_lmo_val_items_count_every_object_of_every_image_at_the_visibility_floor():
    from pose6d_ros.data.target_crops import items_from_split

    for v in (0.3, 0.0):
        items = items_from_split(LMO / "val", [1, 9, 10], targets_only=False, min_visib_fract=v)
        want = {k: n for k, n in _hand_counts(LMO / "val", v).items() if k in (1, 9, 10)}
        assert Counter(it.obj_id for it in items) == want
    assert _hand_counts(LMO / "val", 0.3)[10] < _hand_counts(LMO / "val", 0.0)[10]  # the floor drops eggboxes


@needs_lmo  # the LM-O folder is checked first
def test_missing_detector_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=f"detector checkpoint {tmp_path / 'nope.pt'} not found.*--detector"):
        _bench().main(["--detector", str(tmp_path / "nope.pt"), "--lmo", str(LMO), "--out", str(tmp_path)])


@pytest.mark.slow  # ~45 s on 2 cores
@needs_lmo
def test_smoke_mode_end_to_end_on_the_real_images(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    reg = tmp_path / "objects.yaml"
    from pose6d_ros.registry import ObjectRegistry

    ObjectRegistry.from_bop_models_info(LMO / "models" / "models_info.json").to_yaml(reg)
    det = tmp_path / "det.pt"
    subprocess.run([sys.executable, "-m", "pose6d_ros.detection.train", "--recipe", "training/detector_smoke.yaml",
                    "--objects", str(reg), "--out", str(det), "--steps", "2", "--threads", "1", "--no-progress",
                    "--no-tensorboard"], cwd=ROOT, env=env, check=True, capture_output=True)
    cmd = [sys.executable, "benchmarks/selfsup_lmo_boxes.py", "--mode", "smoke", "--detector", str(det),
           "--out", str(tmp_path / "runs"), "--objects", "1,8", "--threads", "1", "--jobs", "1"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "runs" / "smoke"
    res = json.loads((out / "results.json").read_text())
    # the given boxes of the run's objects, counted from the dataset's file; the detect boxes from detect's file
    given = Counter(d["category_id"] for d in json.loads((LMO / "unlabeled" / "detections_bop.json").read_text()))
    detect = Counter(d["category_id"] for d in json.loads((out / "detections_detect.json").read_text()))
    assert max(Counter((d["image_id"], d["category_id"])
                       for d in json.loads((out / "detections_detect.json").read_text())).values()) == 1
    boxes = res["boxes"]["objects"]
    assert boxes["ape"]["given"] == given[1] and boxes["driller"]["given"] == given[8]
    assert res["boxes"]["objects"]["ape"]["detect"] == detect[1]
    assert res["boxes"]["objects"]["all eight"]["given"] == sum(given.values())
    for v in (0.3, 0.0):
        ev, want = res["eval"][f"visib>={v:g}"], _hand_counts(LMO / "val", v)
        for row in ("synthetic", "given", "detect"):
            assert ev[row]["counts"] == {"ape": want[1], "driller": want[8]}
        for k in ("ape", "driller"):
            for m in ("ADD(-S)", "2D proj 5px"):
                assert ev["difference"]["rows"][k][m] == pytest.approx(ev["detect"]["rows"][k][m]
                                                                       - ev["given"]["rows"][k][m])
    for run in ("synthetic", "selfsup_given", "selfsup_detect"):
        assert (out / run / "model.pt").is_file()
    cfg = [json.loads((out / r / "bench-config.json").read_text()) for r in ("selfsup_given", "selfsup_detect")]
    assert cfg[0]["data"]["detections"] == str(LMO / "unlabeled" / "detections_bop.json")
    assert cfg[1]["data"]["detections"] == str(out / "detections_detect.json")
    strip = [{k: v for k, v in c.items() if k != "output_dir"} for c in cfg]
    strip[0]["data"]["detections"] = strip[1]["data"]["detections"]
    assert strip[0] == strip[1]  # same recipe, steps and seed; only the boxes differ
    assert "| selfsup detect boxes |" in (out / "results.md").read_text()
    # a second call reuses every stage and gives the same numbers
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing") == 4  # detections, synthetic, both runs
    assert json.loads((out / "results.json").read_text())["eval"] == res["eval"]
