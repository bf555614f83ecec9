"""Evaluation plots: valid PNGs, and curve data equal to recalls computed by hand (analytic errors, numpy)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_evaluate_cli import IDS, N_IMAGES, OBJECTS, model_path, split  # noqa: F401  (module fixtures)

from pose6d_ros.data import bop
from pose6d_ros.evaluation.evaluate import MAX_POINTS, InstancePrediction, main, object_errors, score_predictions
from pose6d_ros.evaluation.plots import ADD_THRESHOLDS, PROJ_THRESHOLDS_PX, write_plots
from pose6d_ros.evaluation.tables import load_bop_results
from pose6d_ros.registry import ObjectRegistry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curves(path: Path):
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault((row["metric"], row["object"]), []).append((float(row["threshold"]), float(row["recall"])))
    return {k: np.array(v) for k, v in out.items()}


def _assert_png(path: Path, width: int, height: int) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = cv2.imread(str(path))
    assert img is not None and img.shape[:2] == (height, width), (path, None if img is None else img.shape)
    assert img.std() > 5  # something was drawn


def _eval_points(info) -> np.ndarray:
    """evaluate's protocol: errors are averaged over a fixed seeded subsample of at most MAX_POINTS model vertices."""
    v = info.model_vertices()
    return v[np.random.default_rng(0).choice(len(v), MAX_POINTS, replace=False)] if len(v) > MAX_POINTS else v


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_curves_and_histograms_from_known_errors(tmp_path):
    """Estimates = GT moved by known translations (ADD = |dt| exactly, rotation error 0) or rotated by known angles
    (rotation error = the angle). The ADD curve at every threshold is the hand count of |dt| < thr * d; at 0.1 d it
    equals the table's ADD(-S) recall (``score_predictions``)."""
    reg = ObjectRegistry.from_yaml(OBJECTS)
    K = np.array([[572.0, 0, 320], [0, 572.0, 240], [0, 0, 1]])
    R_gt, t_gt = _rot_z(30.0), np.array([0.01, -0.02, 0.5])
    shifts = {1: [0.001, 0.004, 0.011, 0.03, 0.06], 2: [0.002, 0.017, 0.05]}  # metres, along a fixed direction
    direction = np.array([2.0, -1.0, 2.0]) / 3.0
    preds = []
    for oid, ds in shifts.items():
        preds += [InstancePrediction(oid, i, oid, R_gt, t_gt + d * direction, R_gt, t_gt, K, failed=False, time=0.0)
                  for i, d in enumerate(ds)]
    preds.append(InstancePrediction(2, 9, 2, R_gt, t_gt, R_gt, t_gt, K, failed=True, time=0.0))  # never correct
    preds.append(InstancePrediction(1, 8, 1, _rot_z(30.0 + 20.0), t_gt, R_gt, t_gt, K, failed=False, time=0.0))
    errors = object_errors(preds, reg)
    assert list(errors) == ["duck", "teddy"]
    duck, teddy = errors["duck"], errors["teddy"]
    np.testing.assert_allclose(duck.add[:5], shifts[1], rtol=1e-9)
    np.testing.assert_allclose(duck.trans[:5], shifts[1], rtol=1e-9)
    np.testing.assert_allclose(duck.rot, [0, 0, 0, 0, 0, 20.0], atol=1e-5)
    assert duck.add[5] > 0.1 * reg.get(1).diameter  # the 20 deg turn is wrong under ADD
    assert teddy.failed.tolist() == [False, False, False, True]

    paths = write_plots(errors, tmp_path / "plots", title="known errors")
    _assert_png(paths["recall_curves"], 1000, 400)
    _assert_png(paths["error_histograms"], 1000, 700)
    curves = _curves(paths["recall_csv"])
    for oid, name in ((1, "duck"), (2, "teddy")):
        d = reg.get(oid).diameter
        curve = curves[("add", name)]
        np.testing.assert_allclose(curve[:, 0], ADD_THRESHOLDS)
        rotated = np.linalg.norm(_eval_points(reg.get(1)) @ (_rot_z(50.0) - R_gt).T, axis=1).mean()
        add_by_hand = np.array(shifts[oid] + ([rotated] if oid == 1 else [np.inf]))
        n = len(add_by_hand)
        hand = [100.0 * np.sum(add_by_hand < thr * d) / n for thr in ADD_THRESHOLDS]
        np.testing.assert_allclose(curve[:, 1], hand, atol=1e-4)
        assert np.all(np.diff(curve[:, 1]) >= 0)
        assert ("proj", name) in curves and np.allclose(curves[("proj", name)][:, 0], PROJ_THRESHOLDS_PX)
    table = score_predictions(preds, reg)
    for name in ("duck", "teddy"):
        at_01 = dict(curves[("add", name)])[0.1]
        assert at_01 == pytest.approx(table.rows[name]["ADD(-S)"], abs=1e-4)
        assert dict(curves[("proj", name)])[5.0] == pytest.approx(table.rows[name]["2D proj 5px"], abs=1e-4)
    # duck: shifts 1, 4 mm are < 0.1 * 120 mm, 11 mm too; 30, 60 mm not; the 20 deg rotation of a 12 cm duck not
    assert table.rows["duck"]["ADD(-S)"] == pytest.approx(100.0 * 3 / 6)


def test_evaluate_plots_flag_writes_pngs_whose_curve_matches_the_printed_table_and_numpy(
        model_path, split, tmp_path, capsys):  # noqa: F811
    """``evaluate --plots`` on a tiny split: PNGs, the printed table's recall at 0.1 d on the curve, and the
    per-instance ADD and 2D-projection errors recomputed here with numpy / OpenCV from the BOP results CSV and the GT."""
    out, plots = tmp_path / "ev", tmp_path / "plots"
    assert main(["--model", str(model_path), "--split", str(split), "--registry", str(OBJECTS), "--out", str(out),
                 "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    for name in ("recall_curves.png", "error_histograms.png"):
        assert (plots / name).is_file()
    _assert_png(plots / "recall_curves.png", 1000, 400)
    _assert_png(plots / "error_histograms.png", 1000, 700)
    curves = _curves(plots / "recall_curves.csv")
    reg = ObjectRegistry.from_yaml(OBJECTS)
    estimates = {(e.scene_id, e.im_id, e.obj_id): e for e in load_bop_results(next(out.glob("pose6d_*.csv")))}
    ds = bop.BopDataset(split)
    with open(plots / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(IDS) * N_IMAGES
    for oid in IDS:
        info = reg.get(oid)
        pts = _eval_points(info)
        add_hand = []
        for inst in (i for i in ds.instances if i.obj_id == oid):
            gt, K = ds.gt(inst), ds.camera(inst.scene_id, inst.im_id).K
            e = estimates.get((inst.scene_id, inst.im_id, oid))
            row = next(r for r in rows if r["object"] == info.name and int(r["im_id"]) == inst.im_id)
            if e is None:  # PnP failed: not in the BOP CSV, never correct
                assert row["failed"] == "1"
                add_hand.append(np.inf)
                continue
            add = np.linalg.norm(pts @ e.R.T + e.t - (pts @ gt.R.T + gt.t), axis=1).mean()
            proj = [cv2.projectPoints(pts, cv2.Rodrigues(R)[0], t, K, None)[0].reshape(-1, 2)
                    for R, t in ((e.R, e.t), (gt.R, gt.t))]
            assert float(row["add_m"]) == pytest.approx(add, rel=1e-6, abs=1e-9)
            assert float(row["proj_px"]) == pytest.approx(np.linalg.norm(proj[0] - proj[1], axis=1).mean(), rel=1e-5)
            add_hand.append(add)
        add_hand = np.array(add_hand)
        curve = curves[("add", info.name)]
        hand = [100.0 * np.mean(add_hand < thr * info.diameter) for thr in ADD_THRESHOLDS]
        np.testing.assert_allclose(curve[:, 1], hand, atol=1e-4)
        table_row = re.search(rf"\| {info.name} \| {N_IMAGES} \| ([0-9.]+) \|", printed)
        assert table_row, printed
        assert f"{dict(curve)[0.1]:.1f}" == table_row.group(1)
