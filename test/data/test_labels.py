"""Labels are right, checked through pyrender (an independent renderer).

Tiny spheres are placed at the 3D-box corners of each mesh (computed here from the mesh's vertices),
posed with the GT pose and rendered by pyrender with the GT intrinsics at 4-8x supersampling; their
centroids must fall within 0.5 px of the keypoint labels (synthetic crops) or of the GT keypoints
projected with ``geometry.project_points`` (simulated real frames written in BOP format).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import trimesh

from pose6d_ros.data import bop
from pose6d_ros.data.suites import load_suite_registry
from pose6d_ros.rendering._gl import import_pyrender

pyrender = import_pyrender()  # OSMesa; torch's compiler stack first

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera -> OpenGL camera


def _gl_camera(K: np.ndarray) -> "pyrender.IntrinsicsCamera":
    """OpenGL samples pixel j at window coordinate j + 0.5, OpenCV at j: shift the principal point."""
    return pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, znear=0.01, zfar=10)


def _box_points(vertices: np.ndarray) -> np.ndarray:
    lo, hi = vertices.min(0), vertices.max(0)
    return np.concatenate([np.array(list(itertools.product(*zip(lo, hi)))), ((lo + hi) / 2)[None]])


class MarkerRenderer:
    """Renders small spheres at camera-frame points and returns each one's mask centroid."""

    def __init__(self, width: int, height: int, radius: float, margin: int = 0):
        # A margin around the image: 3D-box corners often project outside a tight crop.
        self.r = pyrender.OffscreenRenderer(width, height)
        self.W, self.H, self.radius, self.m = width + 2 * margin, height + 2 * margin, radius, margin

    def centroids(self, pts_cam: np.ndarray, K: np.ndarray, ss: int) -> np.ndarray:
        scene = pyrender.Scene(bg_color=[0, 0, 0, 0])
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=self.radius)
        K = np.asarray(K, dtype=float)
        nodes = []
        for p in pts_cam:
            T = np.eye(4)
            # Scale each sphere to about 0.4 px of projected radius, whatever its depth.
            T[:3, :3] *= 0.4 * p[2] / K[0, 0] / self.radius
            T[:3, 3] = p
            nodes.append(scene.add(pyrender.Mesh.from_trimesh(sphere), pose=T))
        # Supersampled camera: pixel centres map by u_ss = ss * (u + 0.5) - 0.5.
        K = K.copy()
        K[:2, 2] += self.m
        Ks = np.diag([ss, ss, 1.0]) @ K
        Ks[0, 2] += (ss - 1) / 2
        Ks[1, 2] += (ss - 1) / 2
        scene.add(_gl_camera(Ks), pose=FLIP)
        self.r.viewport_width, self.r.viewport_height = self.W * ss, self.H * ss
        seg = self.r.render(scene, pyrender.RenderFlags.SEG,
                            seg_node_map={n: (i + 1, 0, 0) for i, n in enumerate(nodes)})[0][..., 0]
        out = np.full((len(pts_cam), 2), np.nan)
        for i in range(len(pts_cam)):
            ys, xs = np.nonzero(seg == i + 1)
            if len(xs) > 0.25 * np.pi * (0.4 * ss) ** 2:
                out[i] = ((xs.mean() + 0.5) / ss - 0.5 - self.m, (ys.mean() + 0.5) / ss - 0.5 - self.m)
        return out


@pytest.fixture(scope="module")
def registry():
    return load_suite_registry("lm-lite")


@pytest.fixture(scope="module")
def markers():
    m = MarkerRenderer(64, 64, radius=0.0008, margin=64)
    yield m
    m.r.delete()


def test_synthetic_keypoint_labels_match_pyrender(registry, markers):
    from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops

    ds = SyntheticCrops(registry, 1000, SyntheticConfig(size=64), seed=3)
    b = ds.batch(range(6))
    errs = []
    for j in range(6):
        o = registry.get(int(b["obj_id"][j]))
        box = _box_points(np.asarray(o.load_mesh().vertices))
        R, t = b["R"][j].double().numpy(), b["t"][j].double().numpy()
        c = markers.centroids(box @ R.T + t, b["K_crop"][j].double().numpy(), ss=8)
        ok = ~np.isnan(c[:, 0])
        assert ok.all()
        errs.append(np.linalg.norm(c[ok] - b["keypoints_px"][j].double().numpy()[ok], axis=1))
        # normalised labels follow the pixel labels by the conventions' formula
        n = (b["keypoints_px"][j] + 0.5) * 2 / 64 - 1
        torch.testing.assert_close(b["keypoints"][j], n)
    errs = np.concatenate(errs)
    assert errs.max() < 0.5, errs.max()


@pytest.fixture(scope="module")
def built(tmp_path_factory, registry):
    from pose6d_ros.data.build import build
    from pose6d_ros.data.simreal import RealDomainConfig

    out = tmp_path_factory.mktemp("lm")
    # Without the "real" mesh's shape error, so its silhouettes can be compared exactly.
    cfg = RealDomainConfig(mesh_scale_err=0.0, mesh_warp=0.0)
    build("lm-lite", out, images_per_object=3, seed=5, workers=1, train_fraction=0.34, diag_fraction=0.0,
          object_ids=[1, 9], log=lambda *a: None, cfg=cfg)
    return out


def test_real_gt_keypoints_match_pyrender(built, registry):
    from pose6d_ros.geometry.keypoints import project_points

    mk = MarkerRenderer(640, 480, radius=0.001)
    errs, n_inst = [], 0
    for scene in bop.iter_scenes(built / "test"):
        for im_id in scene.image_ids:
            K = scene.cameras[im_id].K
            for gt, info in zip(scene.gts[im_id], scene.gt_infos[im_id]):
                if info.visib_fract <= 0:
                    continue
                o = registry.get(gt.obj_id)
                box = _box_points(np.asarray(o.load_mesh().vertices))
                c = mk.centroids(box @ gt.R.T + gt.t, K, ss=2)
                kp = project_points(torch.as_tensor(o.keypoints)[None], torch.as_tensor(gt.R)[None],
                                    torch.as_tensor(gt.t)[None], torch.as_tensor(K)[None])[0].numpy()
                ok = ~np.isnan(c[:, 0])
                errs.append(np.linalg.norm(c[ok] - kp[ok], axis=1))
                n_inst += 1
    mk.r.delete()
    assert n_inst >= 4
    errs = np.concatenate(errs)
    assert len(errs) > 20 and errs.max() < 0.5, errs.max()


def test_real_annotations_consistent(built, registry):
    """Saved masks, boxes and splits agree with each other, and the target's saved silhouette with a
    pyrender silhouette of the registry mesh at the GT pose read back from the BOP files."""
    r = pyrender.OffscreenRenderer(640, 480)
    assert bop.list_scenes(built / "train") == [1, 9]
    train = bop.load_scene(built / "train", 1)
    assert train.gts is None  # unlabeled
    dets = bop.load_detections(built / "train_detections.json")
    assert {d.obj_id for d in dets} == {1, 9}
    ious = []
    for scene in bop.iter_scenes(built / "test"):
        for im_id in scene.image_ids:
            rgb = bop.load_rgb(built / "test", scene.scene_id, im_id)
            assert rgb.shape == (480, 640, 3)
            assert scene.gts[im_id][0].obj_id == scene.scene_id  # the target comes first
            for k, (gt, info) in enumerate(zip(scene.gts[im_id], scene.gt_infos[im_id])):
                m = bop.load_mask(built / "test", scene.scene_id, im_id, k, visib=False)
                mv = bop.load_mask(built / "test", scene.scene_id, im_id, k, visib=True)
                assert not (mv & ~m).any()
                assert info.px_count_all == m.sum() and info.px_count_visib == mv.sum()
                if m.any():
                    ys, xs = np.nonzero(m)
                    assert info.bbox_obj == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
                if k == 0:
                    K = scene.cameras[im_id].K
                    sc = pyrender.Scene()
                    T = np.eye(4)
                    T[:3, :3], T[:3, 3] = gt.R, gt.t
                    sc.add(pyrender.Mesh.from_trimesh(registry.get(gt.obj_id).load_mesh()), pose=T)
                    sc.add(_gl_camera(K), pose=FLIP)
                    ref = r.render(sc, pyrender.RenderFlags.DEPTH_ONLY) > 0
                    ious.append((ref & m).sum() / (ref | m).sum())
    r.delete()
    assert len(ious) >= 2 and min(ious) > 0.99, ious
