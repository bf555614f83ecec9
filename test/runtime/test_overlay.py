"""Pose overlays land where an independent renderer and OpenCV's projection put the object.

The silhouette test renders registry objects with pyrender (OpenGL on OSMesa, pose6d_ros/rendering/pyrender_ref.py)
and compares it with the convex hull of the pixels the overlay drew. For a box-shaped object the silhouette IS the
convex hull of its 8 projected box corners (a convex polyhedron's outline), so IoU is near 1 at the true pose; the
objects are the registry's two box-like ones: ``domino`` (a 66-vertex brick, IoU 0.89-0.96) and ``lego`` (a brick
with studs, 0.88-0.92). A curved object fills less of its box hull (duck ~0.5, teddy ~0.35 at the true pose):
the issue's bound of 0.8 can only hold for boxy shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# Imported first: it selects OSMesa before anything imports OpenGL.
from pose6d_ros.rendering.pyrender_ref import PyrenderReference  # noqa: I001
from pose6d_ros.data import bop
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.rendering.mesh import object_mesh
from pose6d_ros.runtime.visualize import (
    ESTIMATE_COLOR,
    GT_COLOR,
    contact_sheet,
    draw_pose_overlay,
    write_overlays,
)

cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "rendering"))
from rendering_helpers import random_rotation  # noqa: E402

OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"
K = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]])  # the LM camera
W, H = 640, 480
BOXY = ("domino", "lego")


@pytest.fixture(scope="module")
def registry() -> ObjectRegistry:
    pytest.importorskip("pybullet_data", reason="pybullet_data holds the registry meshes")
    return ObjectRegistry.from_yaml(OBJECTS)


@pytest.fixture(scope="module")
def renderer(registry):
    pytest.importorskip("pyrender", reason="pyrender + OSMesa is the reference renderer")
    ref = PyrenderReference([object_mesh(registry.get(n)) for n in BOXY])
    yield ref
    ref.close()


def _drawn(R, t, keypoints, D=None, axes=False) -> np.ndarray:
    """``(H, W)`` bool: the pixels the overlay drew (single-colour, no antialiasing, on black)."""
    img = draw_pose_overlay(np.zeros((H, W, 3), np.uint8), K, R, t, keypoints, (0, 255, 0), axes=axes,
                            D=D, antialias=False)
    return img[..., 1] > 0


def _hull(drawn: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(drawn)
    hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32))
    m = np.zeros(drawn.shape, np.uint8)
    cv2.fillConvexPoly(m, hull, 1)
    return m > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("name", BOXY)
def test_box_hull_covers_the_rendered_silhouette_at_the_true_pose_and_not_at_a_shifted_one(registry, renderer, name):
    rng = np.random.default_rng(7)
    kp = registry.get(name).keypoints
    for _ in range(5):
        R = random_rotation(rng)
        t = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.3, 0.45)])
        mask = renderer.render([BOXY.index(name)], R[None], t[None], K, W, H).labels > 0
        assert mask.sum() > 300
        iou = _iou(_hull(_drawn(R, t, kp)), mask)
        assert iou >= 0.8, (name, iou)
        shifted = t + np.array([30.0 * t[2] / K[0, 0], 0.0, 0.0])  # the same pose 30 px to the right
        iou_shift = _iou(_hull(_drawn(R, shifted, kp)), mask)
        assert iou_shift <= 0.6 and iou - iou_shift >= 0.3, (name, iou, iou_shift)


@pytest.mark.parametrize("distorted", [False, True], ids=["pinhole", "plumb_bob"])
def test_drawn_pixels_follow_the_edges_opencv_projects(registry, distorted):
    """Every drawn pixel lies within 1 px of a box edge between cv2.projectPoints' corners, and every edge is drawn
    (each sample along it has a drawn pixel within 1 px)."""
    D = np.array([-0.25, 0.08, 0.001, -0.0015, 0.0]) if distorted else None
    rng = np.random.default_rng(3)
    kp = registry.get("duck").keypoints
    for _ in range(3):
        R, t = random_rotation(rng), np.array([0.02, -0.01, 0.4])
        drawn = _drawn(R, t, kp, D)
        uv, _ = cv2.projectPoints(kp[:8], cv2.Rodrigues(R)[0], t, K, D)
        uv = uv.reshape(8, 2)
        edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
        assert len(edges) == 12
        A, B = uv[[e[0] for e in edges]], uv[[e[1] for e in edges]]  # (12, 2)
        ys, xs = np.nonzero(drawn)
        P = np.stack([xs, ys], 1).astype(float)[:, None, :]  # (N, 1, 2)
        s = np.clip(((P - A) * (B - A)).sum(-1) / ((B - A) ** 2).sum(-1), 0, 1)
        dist = np.linalg.norm(P - (A + s[..., None] * (B - A)), axis=-1).min(axis=1)
        assert dist.max() <= 1.0, dist.max()
        samples = (A[:, None] + np.linspace(0, 1, 40)[None, :, None] * (B - A)[:, None]).reshape(-1, 2)
        near = np.linalg.norm(samples[:, None] - P[:, 0][None], axis=-1).min(axis=1)
        assert near.max() <= 1.0, near.max()


def test_axes_start_at_the_model_origin_and_end_half_a_box_side_along_each_axis(registry):
    kp = registry.get("lego").keypoints
    R, t = random_rotation(np.random.default_rng(5)), np.array([0.0, 0.0, 0.3])
    only_axes = _drawn(R, t, kp, axes=True) & ~_drawn(R, t, kp, axes=False)
    half = 0.5 * np.ptp(kp[:8], axis=0).max()
    pts = np.vstack([np.zeros((1, 3)), half * np.eye(3)])
    uv = cv2.projectPoints(pts, cv2.Rodrigues(R)[0], t, K, None)[0].reshape(4, 2)
    ys, xs = np.nonzero(only_axes)
    P = np.stack([xs, ys], 1).astype(float)
    for p in uv:
        assert np.linalg.norm(P - p, axis=1).min() <= 1.0, p


def test_contact_sheet_places_each_image_in_its_cell():
    imgs = [np.full((30, 40, 3), 20 * (i + 1), np.uint8) for i in range(5)]
    sheet = contact_sheet(imgs, cols=3, pad=2)
    assert sheet.shape == (2 * 32 + 2, 3 * 42 + 2, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        cell = sheet[2 + r * 32: 2 + r * 32 + 30, 2 + c * 42: 2 + c * 42 + 40]
        assert (cell == 20 * (i + 1)).all()
    assert (sheet[2 + 32: 2 + 32 + 30, 2 + 2 * 42: 2 + 2 * 42 + 40] == 255).all()  # the empty sixth cell
    labelled = contact_sheet(imgs, cols=3, labels=[f"#{i}" for i in range(5)], tile=(80, 60))
    assert labelled.shape == (2 * 64 + 4, 3 * 84 + 4, 3)
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(imgs, labels=["a"])


def test_write_overlays_draws_gt_grey_and_estimate_green_on_the_split_frames(registry, tmp_path):
    """A labelled split of 2 objects x 4 frames; the estimate is the GT moved 2 cm sideways. The written PNGs
    (read back with OpenCV) hold grey at the GT's projected corners and green at the estimate's."""
    split = tmp_path / "test"
    ids = (registry.get("domino").id, registry.get("lego").id)
    estimates = {}
    for sid, oid in enumerate(ids, start=1):
        gts = {i: [bop.GtRecord(obj_id=oid, R=random_rotation(np.random.default_rng(i)), t=np.array([0.0, 0, 0.35]))]
               for i in range(4)}
        rgb = {i: np.full((H, W, 3), 40, np.uint8) for i in range(4)}
        bop.save_scene(split, bop.SceneRecord(scene_id=sid, cameras={i: bop.CameraRecord(K=K) for i in range(4)},
                                              gts=gts), rgb=rgb)
        for i, (g,) in gts.items():
            estimates[(sid, i, oid)] = (g.R, g.t + np.array([0.02, 0.0, 0.0]))
    out = write_overlays(split, estimates, registry, tmp_path / "overlays", per_object=3)
    assert len(out["frames"]) == 6
    sheet = cv2.imread(str(out["contact_sheet"]))
    assert sheet is not None and sheet.shape == (2 * (192 + 4) + 4, 3 * (192 + 4) + 4, 3)
    for path in out["frames"]:
        name, scene, im = Path(path).stem.rsplit("_", 2)
        oid = registry.get(name).id
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        R_gt, t_gt = estimates[(int(scene), int(im), oid)][0], np.array([0.0, 0, 0.35])
        R, t = estimates[(int(scene), int(im), oid)]
        kp = registry.get(oid).keypoints[:8]
        for pose, colour in (((R_gt, t_gt), GT_COLOR), ((R, t), ESTIMATE_COLOR)):
            uv = cv2.projectPoints(kp, cv2.Rodrigues(pose[0])[0], pose[1], K, None)[0].reshape(8, 2)
            hits = 0
            for u, v in np.round(uv).astype(int):
                patch = img[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3).astype(int)
                hits += bool((np.abs(patch - colour).max(axis=1) <= 40).any())
            assert hits >= 6, (path, colour, hits)  # a corner may be overdrawn by the other pose's lines


def test_a_pose_behind_the_camera_or_not_finite_draws_nothing(registry):
    kp = registry.get("lego").keypoints
    blank = np.zeros((H, W, 3), np.uint8)
    for R, t in ((np.eye(3), np.array([0.0, 0.0, -0.3])), (np.full((3, 3), np.nan), np.array([0.0, 0.0, 0.3])),
                 (np.eye(3), np.array([0.0, 0.0, np.inf]))):
        assert not draw_pose_overlay(blank, K, R, t, kp).any()
    # half in front: only the edges whose both ends are in front are drawn
    R = np.eye(3)
    t = np.array([0.0, 0.0, -kp[:8, 2].min() - 0.001 * 0.5])  # the z-min face 0.5 mm in front: closer than 1 mm
    ys, xs = np.nonzero(_drawn(R, t, kp))
    far = kp[:8][kp[:8, 2] > 0]  # the z-max face, 5 cm further: its 4 edges only
    uv = cv2.projectPoints(far, np.zeros(3), t, K, None)[0].reshape(4, 2)
    np.testing.assert_allclose([xs.min(), xs.max(), ys.min(), ys.max()],
                               [uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()], atol=1.0)
    with pytest.raises(ValueError, match="keypoints"):
        draw_pose_overlay(blank, K, np.eye(3), np.array([0, 0, 0.3]), kp[:4])
