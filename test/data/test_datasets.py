"""Crop datasets over a tiny generated BOP split: targets against hand formulas, loader reproducibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pose6d_ros.data import bop
from pose6d_ros.data.crops import CropConfig
from pose6d_ros.data.datasets import LabelledCropDataset, UnlabeledCropDataset, keypoint_table, make_loader

H, W, S = 120, 160, 48
K = np.array([[200.0, 0.0, 80.3], [0.0, 210.0, 59.7], [0.0, 0.0, 1.0]])
SIGMA = 1.5


def _box_keypoints(ext) -> np.ndarray:
    ext = np.asarray(ext) / 2
    corners = [np.array(c) for c in itertools.product((-ext[0], ext[0]), (-ext[1], ext[1]), (-ext[2], ext[2]))]
    return np.stack(corners + [np.zeros(3)])


KEYPOINTS = {3: _box_keypoints([0.04, 0.03, 0.05]), 7: _box_keypoints([0.06, 0.02, 0.03])}


def _project(pts, R, t, Kmat=K) -> np.ndarray:
    x = (pts @ R.T + t) @ Kmat.T
    return x[:, :2] / x[:, 2:]


def _rot(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Two scenes; each image shows a Gaussian dot at each instance's centre (keypoint 8)."""
    root = tmp_path_factory.mktemp("bop") / "train"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    for sid, n_inst in ((0, 1), (1, 2)):
        cams, gts, infos, rgbs = {}, {}, {}, {}
        for im in range(3):
            cams[im] = bop.CameraRecord(K=K)
            gts[im], infos[im] = [], []
            img = np.zeros((H, W))
            for k in range(n_inst):
                obj = (3, 7)[k]
                t = np.array([-0.06 + 0.12 * k + rng.uniform(-0.01, 0.01), rng.uniform(-0.02, 0.02), 0.5])
                R = _rot(rng)
                gts[im].append(bop.GtRecord(obj_id=obj, R=R, t=t))
                uv = _project(KEYPOINTS[obj], R, t)
                lo, hi = np.floor(uv.min(0)).astype(int), np.ceil(uv.max(0)).astype(int)
                infos[im].append(bop.GtInfoRecord(bbox_obj=(lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]),
                                                  bbox_visib=(lo[0] + 1, lo[1], hi[0] - lo[0] - 1, hi[1] - lo[1]),
                                                  px_count_all=100, px_count_valid=100, px_count_visib=90,
                                                  visib_fract=0.9))
                c = uv[8]
                img += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * SIGMA ** 2))
            rgbs[im] = np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[:, :, None], 3, 2)
        bop.save_scene(root, bop.SceneRecord(sid, cams, gts, infos), rgb=rgbs)
    return root


def _hand_normalized(kp, R, t, window) -> np.ndarray:
    """conventions.md: u_crop = (u - x0) * S / (x1 - x0) - 0.5, n = (u_crop + 0.5) * 2 / S - 1."""
    uv = _project(kp, R, t)
    x0, y0, x1, y1 = window
    u_crop = np.stack([(uv[:, 0] - x0) * S / (x1 - x0) - 0.5, (uv[:, 1] - y0) * S / (y1 - y0) - 0.5], 1)
    return (u_crop + 0.5) * 2 / S - 1


class TestLabelled:
    def test_targets_match_hand_formulas(self, split):
        ds = LabelledCropDataset(split, KEYPOINTS, crop=CropConfig(size=S, padding=1.5), jitter=True, seed=1)
        assert len(ds) == 9 and ds.obj_ids == [3, 7]
        for i in range(len(ds)):
            it = ds[i]
            gt = bop.load_scene(split, it["scene_id"]).gts[it["im_id"]][it["gt_idx"]]
            assert it["obj_id"] == gt.obj_id and it["obj_index"] == ds.obj_ids.index(gt.obj_id)
            np.testing.assert_allclose(it["R"].numpy(), gt.R, atol=1e-7)
            np.testing.assert_allclose(it["t"].numpy(), gt.t, atol=1e-7)
            want = _hand_normalized(KEYPOINTS[gt.obj_id], gt.R, gt.t, it["window"].double().numpy())
            np.testing.assert_allclose(it["keypoints_2d"].numpy(), want, atol=2e-5)
            assert it["image"].shape == (3, S, S) and it["image"].dtype == torch.float32
            assert it["K"].shape == (3, 3) and "mask" not in it

    def test_dot_in_crop_at_keypoint(self, split):
        """The dot drawn at the centre's projection appears in the crop where keypoints_2d[8] says."""
        ds = LabelledCropDataset(split, KEYPOINTS, obj_ids=[3], crop=CropConfig(size=S, padding=1.5), jitter=True)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
        checked = 0
        for i in range(len(ds)):
            it = ds[i]
            if it["scene_id"] != 0:
                continue  # one dot per image only in scene 0
            n = it["keypoints_2d"][8].double().numpy()
            u = (n + 1) * S / 2 - 0.5
            img = it["image"][0].double().numpy()
            near = ((xx - u[0]) ** 2 + (yy - u[1]) ** 2) < (6 * SIGMA * S / (it["window"][2] - it["window"][0]).item()) ** 2
            w = img * near
            centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
            assert w.max() > 0.5 and np.abs(centroid - u).max() < 0.15
            checked += 1
        assert checked == 3

    def test_box_sources(self, split):
        cfg = CropConfig(size=S, padding=1.5)
        ds = LabelledCropDataset(split, KEYPOINTS, crop=cfg, box_source="visib", jitter=False)
        it = ds[0]
        info = bop.load_scene(split, 0).gt_infos[0][0]
        x, y, w, h = info.bbox_visib
        x0, y0, x1, y1 = x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5  # BOP box spans pixel centres x..x+w
        c, half = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), 1.5 * max(x1 - x0, y1 - y0) / 2
        np.testing.assert_allclose(it["window"].numpy(), [c[0] - half, c[1] - half, c[0] + half, c[1] + half])
        proj = LabelledCropDataset(split, KEYPOINTS, crop=cfg, box_source="projected", jitter=False)[0]
        gt = bop.load_scene(split, 0).gts[0][0]
        uv = _project(KEYPOINTS[3], gt.R, gt.t)
        c, half = (uv.min(0) + uv.max(0)) / 2, 1.5 * (uv.max(0) - uv.min(0)).max() / 2
        np.testing.assert_allclose(proj["window"].numpy(), np.r_[c - half, c + half], atol=1e-4)

    def test_keypoints_as_tensor(self, split):
        table = torch.stack([torch.from_numpy(KEYPOINTS[7]), torch.from_numpy(KEYPOINTS[3])])
        ds = LabelledCropDataset(split, table, obj_ids=[7, 3], crop=CropConfig(size=S), jitter=False)
        it = next(ds[i] for i in range(len(ds)) if ds[i]["obj_id"] == 7)
        assert it["obj_index"] == 0
        np.testing.assert_allclose(it["keypoints_3d"].numpy(), KEYPOINTS[7], atol=1e-7)

    def test_errors(self, split, tmp_path):
        with pytest.raises(ValueError, match="need obj_ids"):
            keypoint_table(torch.zeros(2, 9, 3))
        with pytest.raises(ValueError, match=r"no entry for object ids \[5\]"):
            keypoint_table(KEYPOINTS, [3, 5])
        with pytest.raises(ValueError, match="box_source"):
            LabelledCropDataset(split, KEYPOINTS, box_source="nope")
        bop.save_scene(tmp_path, bop.SceneRecord(0, {0: bop.CameraRecord(K=K)}))
        with pytest.raises(ValueError, match="unlabeled"):
            LabelledCropDataset(tmp_path, KEYPOINTS)


class TestUnlabeled:
    def test_gt_boxes_give_no_pose(self, split):
        ds = UnlabeledCropDataset(split, [7], crop=CropConfig(size=S))
        assert len(ds) == 3
        it = ds[0]
        assert it["obj_id"] == 7 and it["obj_index"] == 0
        assert not {"R", "t", "keypoints_2d"} & set(it)

    def test_detections(self, split, tmp_path):
        dets = [bop.DetectionRecord(0, 1, 3, 0.9, (10.0, 20.0, 30.0, 20.0)),
                bop.DetectionRecord(0, 1, 3, 0.1, (0.0, 0.0, 5.0, 5.0)),
                bop.DetectionRecord(1, 2, 9, 0.9, (0.0, 0.0, 5.0, 5.0)),
                bop.DetectionRecord(1, 2, 7, 0.8, (100.0, 50.0, 20.0, 40.0))]
        bop.save_detections(tmp_path / "dets.json", dets)
        ds = UnlabeledCropDataset(split, [3, 7], crop=CropConfig(size=S, padding=1.0), box_source="detections",
                                  detections=tmp_path / "dets.json", score_threshold=0.5, jitter=False)
        assert len(ds) == 2
        a, b = ds[0], ds[1]
        # COCO box (10, 20, 30, 20): edges 9.5..39.5 x 19.5..39.5 -> square side 30 around (24.5, 29.5)
        np.testing.assert_allclose(a["window"].numpy(), [9.5, 14.5, 39.5, 44.5])
        assert (a["scene_id"], a["im_id"], a["obj_index"]) == (0, 1, 0) and b["obj_index"] == 1
        with pytest.raises(ValueError, match="needs detections"):
            UnlabeledCropDataset(split, [3], box_source="detections")


def _batches(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


class TestLoader:
    def test_reproducible_with_workers(self, split):
        ds = LabelledCropDataset(split, KEYPOINTS, crop=CropConfig(size=S), jitter=True, seed=3)
        a = _batches(make_loader(ds, batch_size=4, workers=2, seed=11))
        b = _batches(make_loader(ds, batch_size=4, workers=2, seed=11))
        _assert_same(a, b)
        _assert_same(a, _batches(make_loader(ds, batch_size=4, workers=0, seed=11)))  # independent of workers
        c = _batches(make_loader(ds, batch_size=4, workers=0, seed=12))
        assert not all(torch.equal(x["gt_idx"], y["gt_idx"]) and torch.equal(x["im_id"], y["im_id"])
                       and torch.equal(x["scene_id"], y["scene_id"]) for x, y in zip(a, c))

    def test_epoch_changes_jitter(self, split):
        ds = UnlabeledCropDataset(split, [3, 7], crop=CropConfig(size=S), jitter=True)
        w0 = ds[0]["window"]
        assert torch.equal(w0, ds[0]["window"])
        ds.set_epoch(1)
        assert not torch.equal(w0, ds[0]["window"])
