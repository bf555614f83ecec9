"""Target crops over a tiny generated BOP split: windows, crop keypoints and crop content against hand
formulas (docs/conventions.md), the LINEMOD item protocol, detections."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
import yaml

from pose6d_ros.data import bop
from pose6d_ros.data.target_crops import TargetCrops, first_per_object, items_from_detections, items_from_split
from pose6d_ros.registry import ObjectRegistry, RunObjects

H, W, S = 120, 160, 48
K = np.array([[200.0, 0.0, 80.3], [0.0, 210.0, 59.7], [0.0, 0.0, 1.0]])
SIGMA = 1.5
EXTENTS = {3: (0.04, 0.03, 0.05), 7: (0.06, 0.02, 0.03)}
#: scene id -> objects in it; scene k's target is object k, object 3 is clutter in scene 7
SCENES = {3: (3,), 7: (7, 3)}
N_IM = 3


def _box_keypoints(ext) -> np.ndarray:
    """The 8 corners in product((x-, x+), (y-, y+), (z-, z+)) order, then the centre (conventions.md)."""
    e = np.asarray(ext) / 2
    return np.stack([np.array(c) for c in itertools.product(*((-v, v) for v in e))] + [np.zeros(3)])


KEYPOINTS = {o: _box_keypoints(e) for o, e in EXTENTS.items()}


def _project(pts, R, t, Kmat=K) -> np.ndarray:
    x = (pts @ R.T + t) @ Kmat.T
    return x[:, :2] / x[:, 2:]


def _rot(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> RunObjects:
    """Box meshes of ``EXTENTS`` (their registry keypoints are the box corners and centre)."""
    d = tmp_path_factory.mktemp("reg")
    entries = []
    for oid, ext in EXTENTS.items():
        trimesh.creation.box(extents=ext).export(d / f"box{oid}.obj")
        entries.append({"id": oid, "name": f"box{oid}", "mesh": f"box{oid}.obj", "units": "m"})
    (d / "reg.yaml").write_text(yaml.safe_dump({"objects": entries}))
    reg = ObjectRegistry.from_yaml(d / "reg.yaml")
    for oid in EXTENTS:  # the fixture's premise, checked against the hand table
        np.testing.assert_allclose(reg.get(oid).keypoints, KEYPOINTS[oid], atol=1e-9)
    return RunObjects(reg, [7, 3])  # model rows: 7 -> 0, 3 -> 1


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Scenes 3 and 7; each image shows a Gaussian dot at the centre (keypoint 8) of its scene's target."""
    root = tmp_path_factory.mktemp("bop") / "test"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    for sid, objs in SCENES.items():
        cams, gts, infos, rgbs = {}, {}, {}, {}
        for im in range(N_IM):
            cams[im] = bop.CameraRecord(K=K)
            gts[im], infos[im] = [], []
            img = np.zeros((H, W))
            for k, obj in enumerate(objs):
                t = np.array([-0.03 + 0.07 * k + rng.uniform(-0.01, 0.01), rng.uniform(-0.02, 0.02), 0.5])
                R = _rot(rng)
                gts[im].append(bop.GtRecord(obj_id=obj, R=R, t=t))
                uv = _project(KEYPOINTS[obj], R, t)
                lo, hi = np.floor(uv.min(0)).astype(int), np.ceil(uv.max(0)).astype(int)
                infos[im].append(bop.GtInfoRecord(bbox_obj=(lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]),
                                                  bbox_visib=(lo[0] + 1, lo[1], hi[0] - lo[0] - 1, hi[1] - lo[1]),
                                                  px_count_all=100, px_count_valid=100, px_count_visib=90,
                                                  visib_fract=0.9))
                if obj == sid:
                    c = uv[8]
                    img += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * SIGMA ** 2))
            rgbs[im] = np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[:, :, None], 3, 2)
        bop.save_scene(root, bop.SceneRecord(sid, cams, gts, infos), rgb=rgbs)
    return root


def _window(bbox_visib, padding):
    """BOP (x, y, w, h) spans pixel centres x..x+w, so the box edges are half a pixel out; the window is
    the square of side padding * longer side around the box centre."""
    x, y, w, h = bbox_visib
    x0, y0, x1, y1 = x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5
    c, half = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), padding * max(x1 - x0, y1 - y0) / 2
    return np.r_[c - half, c + half], np.array([x0, y0, x1, y1])


def _to_crop_px(uv, window) -> np.ndarray:
    """conventions.md: u_crop = (u - x0) * S / (x1 - x0) - 0.5."""
    x0, y0, x1, y1 = window
    return np.stack([(uv[..., 0] - x0) * S / (x1 - x0) - 0.5, (uv[..., 1] - y0) * S / (y1 - y0) - 0.5], -1)


def test_items_follow_the_linemod_protocol(split):
    items = items_from_split(split, [3, 7])
    assert sorted({(it.scene_id, it.obj_id) for it in items}) == [(3, 3), (7, 7)]  # clutter 3 in scene 7 left out
    assert len(items) == 2 * N_IM
    everything = items_from_split(split, [3, 7], targets_only=False)
    assert sorted((it.scene_id, it.obj_id) for it in everything) == sorted(
        [(3, 3)] * N_IM + [(7, 7)] * N_IM + [(7, 3)] * N_IM)
    gt = bop.load_scene(split, 7).gts[1][0]
    it = next(i for i in items if (i.scene_id, i.im_id) == (7, 1))
    np.testing.assert_allclose(it.R, gt.R, atol=1e-9)
    np.testing.assert_allclose(it.t, gt.t, atol=1e-9)
    assert it.bbox == tuple(float(v) for v in bop.load_scene(split, 7).gt_infos[1][0].bbox_visib)


@pytest.mark.parametrize("padding", [1.3, 1.5])
def test_labels_and_box_match_hand_formulas(split, objects, padding):
    items = items_from_split(split, [3, 7])
    crops = TargetCrops(split, items, objects, S, padding=padding)
    assert crops.labelled and len(crops) == len(items)
    b = crops.batch(range(len(items)))
    assert b["image"].shape == (len(items), 3, S, S) and b["image"].dtype == torch.float32
    for i, it in enumerate(items):
        assert int(b["object_index"][i]) == objects.ids.index(it.obj_id)
        assert b["ids"][i].tolist() == [it.scene_id, it.im_id, it.obj_id]
        window, box = _window(it.bbox, padding)
        uv = _project(KEYPOINTS[it.obj_id], it.R, it.t)
        want = (_to_crop_px(uv, window) + 0.5) * 2 / S - 1  # normalised: n = (u_crop + 0.5) * 2 / S - 1
        np.testing.assert_allclose(b["keypoints"][i].double().numpy(), want, atol=2e-5)
        np.testing.assert_allclose(b["box"][i].double().numpy(), _to_crop_px(box.reshape(2, 2), window).reshape(4),
                                   atol=1e-4)
        np.testing.assert_allclose(b["R"][i].numpy(), it.R, atol=1e-6)
        np.testing.assert_allclose(b["K_full"][i].numpy(), K, atol=1e-5)
    assert "R" not in crops.batch([0], with_labels=False)


def test_jittered_crop_shows_the_dot_where_its_keypoint_says(split, objects):
    """The dot drawn at the target's centre appears in each jittered crop at the centre's label."""
    torch.manual_seed(0)
    crops = TargetCrops(split, items_from_split(split, [3, 7]), objects, S, padding=1.5, jitter=(0.1, 0.15))
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    b = crops.batch(range(len(crops)))
    straight = crops.batch(range(len(crops)), jitter=False)
    assert not torch.allclose(b["K"], straight["K"])  # the windows did move
    for i in range(len(crops)):
        u = (b["keypoints"][i, 8].double().numpy() + 1) * S / 2 - 0.5
        img = b["image"][i, 0].double().numpy()
        near = ((xx - u[0]) ** 2 + (yy - u[1]) ** 2) < (6 * SIGMA * b["K"][i, 0, 0].item() / K[0, 0]) ** 2
        w = img * near
        centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        assert w.max() > 0.5 and np.abs(centroid - u).max() < 0.15


def test_detections_are_unlabelled_and_filtered_by_object(split, objects, tmp_path):
    dets = [bop.DetectionRecord(3, 1, 3, 0.9, (10.0, 20.0, 30.0, 20.0)),
            bop.DetectionRecord(7, 2, 9, 0.9, (0.0, 0.0, 5.0, 5.0)),
            bop.DetectionRecord(7, 2, 7, 0.8, (100.0, 50.0, 20.0, 40.0))]
    bop.save_detections(tmp_path / "dets.json", dets)
    items = items_from_detections(tmp_path / "dets.json", [3, 7])
    assert [(it.scene_id, it.im_id, it.obj_id, it.bbox) for it in items] == [
        (3, 1, 3, (10.0, 20.0, 30.0, 20.0)), (7, 2, 7, (100.0, 50.0, 20.0, 40.0))]
    crops = TargetCrops(split, items, objects, S, padding=1.0)
    assert not crops.labelled
    b = crops.batch([0, 1])
    assert "R" not in b and b["object_index"].tolist() == [1, 0]
    # (10, 20, 30, 20): edges 9.5..40.5 x 19.5..40.5 -> square window of side 31 around (25, 30)
    A = b["K"][0].double().numpy() @ np.linalg.inv(K)  # crop pixel = A @ image pixel
    np.testing.assert_allclose(A[:2, :2], np.eye(2) * S / 31, atol=1e-5)
    np.testing.assert_allclose(A[:2] @ [9.5, 14.5, 1.0], [-0.5, -0.5], atol=1e-4)
    with pytest.raises(ValueError, match="no instances"):
        TargetCrops(split, [], objects, S)


def test_first_per_object_keeps_every_object():
    items = [SimpleNamespace(obj_id=o, k=k) for o in (1, 2, 5) for k in range(4)]
    kept = first_per_object(items, 2)
    assert [(it.obj_id, it.k) for it in kept] == [(1, 0), (1, 1), (2, 0), (2, 1), (5, 0), (5, 1)]
    assert first_per_object(items, 10) == items
