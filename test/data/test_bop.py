"""BOP reader/writer: exact round trips, mm <-> m against hand values, rejection of malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pose6d_ros.data import bop


def _rand_rot(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _scene(rng, scene_id=3, n_images=4, obj_ids=(1, 5)) -> bop.SceneRecord:
    cams, gts, infos = {}, {}, {}
    for im in range(n_images):
        K = np.array([[rng.uniform(400, 700), 0, rng.uniform(300, 340)], [0, rng.uniform(400, 700), 240.123], [0, 0, 1]])
        cams[im * 2] = bop.CameraRecord(K=K, depth_unit=0.0001, R_w2c=_rand_rot(rng),
                                        t_w2c=rng.normal(size=3) * 10 ** rng.uniform(-4, 1, size=3))
        gts[im * 2] = [bop.GtRecord(obj_id=o, R=_rand_rot(rng), t=rng.normal(size=3) * 10 ** rng.uniform(-6, 1, size=3))
                       for o in obj_ids]
        infos[im * 2] = [bop.GtInfoRecord(bbox_obj=(1, 2, 30, 40), bbox_visib=(-1, -1, -1, -1), px_count_all=10,
                                          px_count_valid=9, px_count_visib=0, visib_fract=float(rng.uniform()))
                         for _ in obj_ids]
    return bop.SceneRecord(scene_id=scene_id, cameras=cams, gts=gts, gt_infos=infos)


def _assert_scene_equal(a: bop.SceneRecord, b: bop.SceneRecord) -> None:
    assert a.scene_id == b.scene_id and a.image_ids == b.image_ids
    for im in a.image_ids:
        ca, cb = a.cameras[im], b.cameras[im]
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_array_equal(ca.R_w2c, cb.R_w2c)
        np.testing.assert_array_equal(ca.t_w2c, cb.t_w2c)
        assert ca.depth_unit == cb.depth_unit
        for ga, gb in zip(a.gts[im], b.gts[im], strict=True):
            assert ga.obj_id == gb.obj_id
            np.testing.assert_array_equal(ga.R, gb.R)
            np.testing.assert_array_equal(ga.t, gb.t)
        assert a.gt_infos[im] == b.gt_infos[im]


class TestRoundTrip:
    def test_scene_exact(self, tmp_path):
        rng = np.random.default_rng(0)
        scene = _scene(rng)
        bop.save_scene(tmp_path / "train", scene)
        _assert_scene_equal(scene, bop.load_scene(tmp_path / "train", 3))
        assert bop.list_scenes(tmp_path / "train") == [3]
        assert (tmp_path / "train" / "000003" / "scene_gt.json").is_file()
        assert not list((tmp_path / "train" / "000003").glob(".*tmp*"))  # atomic writes leave no temp file

    def test_many_magnitudes_exact(self, tmp_path):
        # Values chosen where x * 1000 / 1000 != x in floating point: the decimal shift must keep them.
        xs = [0.1, 0.3, 1 / 3, 2.675e-3, 1e-9, 123.456789012345, 5e-324, 1.7976931348623157e300, -0.0205]
        naive_fails = [x for x in xs if (x * 1000) / 1000 != x]
        assert naive_fails, "the sample should contain values a float multiply would not round-trip"
        gts = {i: [bop.GtRecord(obj_id=1, R=np.eye(3), t=np.array([x, -x, x]))] for i, x in enumerate(xs)}
        cams = {i: bop.CameraRecord(K=np.eye(3)) for i in gts}
        bop.save_scene(tmp_path, bop.SceneRecord(0, cams, gts))
        back = bop.load_scene(tmp_path, 0).gts
        for i, x in enumerate(xs):
            assert back[i][0].t.tolist() == [x, -x, x]

    def test_models_info_and_mm_text(self, tmp_path):
        sym = np.eye(4)
        sym[:3, :3] = np.diag([-1.0, -1.0, 1.0])
        sym[:3, 3] = [0.0, 0.001, -0.25]
        info = {7: bop.ModelInfo(7, diameter=0.1, min=[-0.05, -0.02, -0.0125], size=[0.1, 0.04, 0.025],
                                 symmetries_discrete=[sym],
                                 symmetries_continuous=[(np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, 0.003]))])}
        path = tmp_path / "models" / "models_info.json"
        bop.save_models_info(path, info)
        raw = json.loads(path.read_text())["7"]
        # hand values in millimetres
        assert raw["diameter"] == 100 and raw["min_z"] == -12.5 and raw["size_y"] == 40
        assert raw["symmetries_discrete"][0][3:12:4] == [0, 1, -250]
        assert raw["symmetries_continuous"][0]["offset"] == [0, 0, 3]
        back = bop.load_models_info(path)[7]
        assert back.diameter == 0.1
        np.testing.assert_array_equal(back.min, info[7].min)
        np.testing.assert_array_equal(back.size, info[7].size)
        np.testing.assert_array_equal(back.symmetries_discrete[0], sym)
        np.testing.assert_array_equal(back.symmetries_continuous[0][1], [0.0, 0.0, 0.003])

    def test_camera_targets_detections(self, tmp_path):
        cam = bop.DatasetCamera(K=np.array([[572.4114, 0, 325.2611], [0, 573.57043, 242.04899], [0, 0, 1]]),
                                width=640, height=480, depth_unit=0.001)
        bop.save_camera(tmp_path / "camera.json", cam)
        back = bop.load_camera(tmp_path / "camera.json")
        np.testing.assert_array_equal(back.K, cam.K)
        assert (back.width, back.height, back.depth_unit) == (640, 480, 0.001)
        assert json.loads((tmp_path / "camera.json").read_text())["depth_scale"] == 1  # 1 mm per unit

        targets = [bop.TargetRecord(2, 10, 5, 1), bop.TargetRecord(2, 11, 5, 2)]
        bop.save_targets(tmp_path / bop.TARGETS_BOP19, targets)
        assert bop.load_targets(tmp_path / bop.TARGETS_BOP19) == targets

        dets = [bop.DetectionRecord(1, 2, 3, 0.9, (10.5, 20.0, 30.25, 40.0), 0.01)]
        bop.save_detections(tmp_path / "dets.json", dets)
        assert bop.load_detections(tmp_path / "dets.json") == dets

    def test_unlabeled_scene(self, tmp_path):
        D = np.array([-0.1, 0.02, 1e-3, -2e-3, 5e-4])
        bop.save_scene(tmp_path, bop.SceneRecord(1, {0: bop.CameraRecord(K=np.eye(3)),
                                                     1: bop.CameraRecord(K=np.eye(3), D=D)}))
        s = bop.load_scene(tmp_path, 1)
        assert s.gts is None and s.gt_infos is None and s.cameras[0].depth_unit is None
        assert s.cameras[0].D is None and s.cameras[1].D.tolist() == D.tolist()


class TestReadBopFiles:
    """Files written by hand in the BOP format (millimetres), read into metres."""

    def _write(self, tmp_path, name, obj) -> Path:
        d = tmp_path / "test" / "000001"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
        return d / name

    def test_hand_values(self, tmp_path):
        self._write(tmp_path, "scene_camera.json", {"0": {"cam_K": [572.4114, 0.0, 325.2611, 0.0, 573.57043, 242.04899,
                                                                    0.0, 0.0, 1.0], "depth_scale": 0.1,
                                                          "cam_R_w2c": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                                                          "cam_t_w2c": [0, 10, -2000], "elev": 45}})
        self._write(tmp_path, "scene_gt.json", {"0": [{"cam_R_m2c": [1, 0, 0, 0, -1, 0, 0, 0, -1],
                                                       "cam_t_m2c": [100, -20.5, 1000], "obj_id": 2}]})
        s = bop.load_scene(tmp_path / "test", 1)
        assert s.cameras[0].depth_unit == 0.0001
        assert s.cameras[0].K[1, 1] == 573.57043
        assert s.cameras[0].t_w2c.tolist() == [0.0, 0.01, -2.0]
        assert s.gts[0][0].t.tolist() == [0.1, -0.0205, 1.0]
        assert s.gts[0][0].R.tolist() == [[1, 0, 0], [0, -1, 0], [0, 0, -1]]

    @pytest.mark.parametrize(
        "name, content, pattern",
        [
            ("scene_camera.json", '{"0": {"cam_K": [1, 2', r"scene_camera\.json: invalid JSON"),
            ("scene_camera.json", {"0": {"depth_scale": 1}}, r"scene_camera\.json: image 0: missing key 'cam_K'"),
            ("scene_camera.json", {"0": {"cam_K": [1] * 8}}, r"scene_camera\.json: image 0\.cam_K: expected 9 numbers, got 8"),
            ("scene_camera.json", '{"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, NaN]}}', r"scene_camera\.json: invalid JSON.*non-finite"),
            ("scene_camera.json", '{"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, 1e999]}}', r"image 0\.cam_K\[8\]: non-finite"),
            ("scene_camera.json", {"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, "1"]}}, r"cam_K\[8\]: expected a number"),
            ("scene_camera.json", {"a": {"cam_K": [1] * 9}}, r"key 'a' is not an integer image id"),
            ("scene_camera.json", [1, 2], r"expected a JSON object"),
            ("scene_camera.json", {"0": {"cam_K": [1] * 9, "cam_D": [0.1] * 6}}, r"image 0\.cam_D: expected 4, 5 or 8"),
            ("scene_gt.json", {"0": [{"cam_R_m2c": [1] * 9, "cam_t_m2c": [1, 2], "obj_id": 1}]},
             r"scene_gt\.json: image 0, instance 0\.cam_t_m2c: expected 3 numbers, got 2"),
            ("scene_gt.json", {"0": [{"cam_R_m2c": [1] * 9, "cam_t_m2c": [1, 2, 3], "obj_id": 1.5}]},
             r"instance 0\.obj_id: expected an integer"),
            ("scene_gt_info.json", {"0": [{"bbox_obj": [1, 2, 3, 4], "bbox_visib": [1, 2, 3, 4], "px_count_all": 1,
                                           "px_count_valid": 1, "visib_fract": 0.5}]},
             r"scene_gt_info\.json: image 0, instance 0: missing key 'px_count_visib'"),
        ],
    )
    def test_malformed(self, tmp_path, name, content, pattern):
        if name != "scene_camera.json":
            self._write(tmp_path, "scene_camera.json", {"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, 1]}})
        if name == "scene_gt_info.json":
            self._write(tmp_path, "scene_gt.json", {"0": [{"cam_R_m2c": [1] * 9, "cam_t_m2c": [1, 2, 3], "obj_id": 1}]})
        self._write(tmp_path, name, content)
        with pytest.raises(bop.BopFormatError, match=pattern):
            bop.load_scene(tmp_path / "test", 1)

    def test_gt_info_count_mismatch(self, tmp_path):
        self._write(tmp_path, "scene_camera.json", {"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, 1]}})
        self._write(tmp_path, "scene_gt.json", {"0": [{"cam_R_m2c": [1] * 9, "cam_t_m2c": [1, 2, 3], "obj_id": 1}]})
        self._write(tmp_path, "scene_gt_info.json", {"0": []})
        with pytest.raises(bop.BopFormatError, match=r"scene_gt_info\.json: image 0: 0 entries, but scene_gt\.json has 1"):
            bop.load_scene(tmp_path / "test", 1)

    def test_gt_without_camera(self, tmp_path):
        self._write(tmp_path, "scene_camera.json", {"0": {"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, 1]}})
        self._write(tmp_path, "scene_gt.json", {"4": []})
        with pytest.raises(bop.BopFormatError, match=r"image ids \[4\] have no entry"):
            bop.load_scene(tmp_path / "test", 1)

    def test_missing_scene(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="scene_camera.json"):
            bop.load_scene(tmp_path, 9)


class TestWriteValidation:
    def test_records_reject_bad_shapes(self):
        with pytest.raises(ValueError, match=r"CameraRecord\.K: expected shape \(3, 3\)"):
            bop.CameraRecord(K=np.ones(8))
        with pytest.raises(ValueError, match=r"GtRecord\.t: non-finite"):
            bop.GtRecord(obj_id=1, R=np.eye(3), t=[0, np.nan, 1])

    def test_failed_write_keeps_old_file(self, tmp_path):
        path = tmp_path / "scene_gt.json"
        good = {0: [bop.GtRecord(1, np.eye(3), [0.0, 0.0, 1.0])]}
        bop.save_scene_gt(path, good)
        before = path.read_bytes()
        bad = bop.GtRecord(1, np.eye(3), [0.0, 0.0, 1.0])
        bad.t[2] = np.inf  # bypasses the constructor's check
        with pytest.raises(ValueError, match="non-finite"):
            bop.save_scene_gt(path, {0: [bad]})
        assert path.read_bytes() == before


class TestImages:
    def test_rgb_png_exact_and_channel_order(self, tmp_path):
        rng = np.random.default_rng(1)
        img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        p = bop.save_rgb(tmp_path, 0, 5, img)
        assert p.name == "000005.png"
        np.testing.assert_array_equal(bop.load_rgb(tmp_path, 0, 5), img)
        np.testing.assert_array_equal(cv2.imread(str(p))[:, :, ::-1], img)  # file holds a true RGB picture

    def test_rgb_jpg(self, tmp_path):
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., 0] = 200  # red
        bop.save_rgb(tmp_path, 0, 0, img, ext=".jpg")
        assert bop.rgb_path(tmp_path, 0, 0).suffix == ".jpg"
        back = bop.load_rgb(tmp_path, 0, 0).astype(int)
        assert np.abs(back - img).max() <= 3

    def test_gray_folder(self, tmp_path):
        d = tmp_path / "000000" / "gray"
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "000001.png"), np.full((4, 5), 77, np.uint8))
        np.testing.assert_array_equal(bop.load_rgb(tmp_path, 0, 1), np.full((4, 5, 3), 77, np.uint8))
        with pytest.raises(FileNotFoundError, match="no image 000002"):
            bop.load_rgb(tmp_path, 0, 2)

    def test_depth_units(self, tmp_path):
        depth = np.array([[0.0, 1.0], [0.12345, 6.5535]])
        p = bop.save_depth(tmp_path, 0, 0, depth, depth_unit=0.0001)  # BOP depth_scale 0.1
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16
        assert raw.tolist() == [[0, 10000], [1234, 65535]]  # 0.12345 / 1e-4 = 1234.5 -> rint (even) 1234
        back = bop.load_depth(tmp_path, 0, 0, 0.0001)
        assert np.abs(back - depth).max() <= 0.5e-4 + 1e-7
        with pytest.raises(ValueError, match="does not fit in uint16"):
            bop.save_depth(tmp_path, 0, 0, np.array([[7.0]]), depth_unit=0.0001)

    def test_masks(self, tmp_path):
        m = np.zeros((6, 7), bool)
        m[1:3, 2:5] = True
        p = bop.save_mask(tmp_path, 2, 3, 1, m, visib=True)
        assert p.parent.name == "mask_visib" and p.name == "000003_000001.png"
        np.testing.assert_array_equal(bop.load_mask(tmp_path, 2, 3, 1), m)


class TestIndex:
    def test_filters(self, tmp_path):
        rng = np.random.default_rng(2)
        split = tmp_path / "test"
        for sid in (1, 2):
            bop.save_scene(split, _scene(rng, scene_id=sid, n_images=3, obj_ids=(1, 5)))
        ds = bop.BopDataset(split)
        assert len(ds.images) == 6 and len(ds) == 12 and ds.labelled
        assert ds[0] == bop.BopInstance(1, 0, 0, 1)
        ds1 = bop.BopDataset(split, obj_ids=[5])
        assert {i.obj_id for i in ds1.instances} == {5} and len(ds1) == 6
        visib = bop.BopDataset(split, min_visib_fract=0.5)
        expected = sum(1 for i in ds.instances if ds.gt_info(i).visib_fract >= 0.5)
        assert len(visib) == expected and 0 < expected < 12
        tg = bop.BopDataset(split, targets=[bop.TargetRecord(2, 4, 5, 1)])
        assert tg.images == [(2, 4)] and tg.instances == [bop.BopInstance(2, 4, 1, 5)]
        gt = ds.gt(ds[3])
        assert gt.obj_id == ds[3].obj_id
        assert bop.list_splits(tmp_path) == ["test"]

    def test_empty_split(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no BOP scenes"):
            bop.BopDataset(tmp_path)
