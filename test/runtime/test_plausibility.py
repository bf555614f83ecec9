"""Implausible input is refused before it becomes a pose: an absurd camera K, a box of a few pixels, a
pose outside the depth range. Limits against hand-computed values; poses against known ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose6d_ros.geometry.camera import CameraModel, check_plausible
from pose6d_ros.runtime import Detection, Estimator, OracleKeypointPredictor


def _cam(fx, fy=None, cx=320.0, cy=240.0, w=640, h=480):
    return CameraModel(K=np.array([[fx, 0.0, cx], [0.0, fy or fx, cy], [0.0, 0.0, 1.0]]), width=w, height=h)


def _fx_for_fov(fov_deg, size):
    return size / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


@pytest.mark.parametrize("camera", [
    _cam(500.0),                                      # a 65 deg webcam
    _cam(_fx_for_fov(1.1, 640), _fx_for_fov(1.1, 480)),  # a long telephoto, just above 1 deg
    _cam(_fx_for_fov(178.0, 640), _fx_for_fov(178.0, 480)),  # a fisheye's K, just below 179 deg
    _cam(500.0, cx=-300.0, cy=700.0),                  # an off-centre crop: principal point past the edge
])
def test_plausible_cameras_pass(camera):
    check_plausible(camera)


@pytest.mark.parametrize("camera,needle", [
    (_cam(1e12), r"fx = 1e\+12 gives a field of view of 3\.667e-08 deg"),  # 2 atan(320 / 1e12) in degrees
    (_cam(_fx_for_fov(0.9, 640), 500.0), r"fx = .* field of view of 0\.9 deg over the 640-px width"),
    (_cam(500.0, _fx_for_fov(179.5, 480)), r"fy = .* field of view of 179\.5 deg over the 480-px height"),
    (_cam(500.0, cx=961.0), r"principal point cx = 961 is far outside"),  # past 1.5 x 640
    (_cam(500.0, cy=-241.0), r"principal point cy = -241 is far outside"),  # before -0.5 x 480
])
def test_absurd_cameras_are_refused_naming_the_field(camera, needle):
    with pytest.raises(ValueError, match=r"CameraInfo\.k: " + needle):
        check_plausible(camera)


def _oracle_scene(card, camera, z_values):
    """Poses straight ahead at depths ``z_values`` (object 'cat', id 7) and their projected boxes."""
    from scipy.spatial.transform import Rotation

    n = len(z_values)
    R = Rotation.from_euler("xyz", [[20, -30, 10]] * n, degrees=True).as_matrix()
    t = np.stack([np.zeros(n), np.zeros(n), np.asarray(z_values, dtype=np.float64)], 1)
    kp = card.keypoints_array[card.object_ids.index(7)]
    K = np.asarray(camera.K)
    boxes = []
    for i in range(n):
        cam = kp @ R[i].T + t[i]
        uv = cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2]
        boxes.append((*(uv.min(0) - 2), *(uv.max(0) + 2)))
    return R, t, boxes


def test_depth_range_skips_poses_outside_with_a_reason(registry, card):
    camera = _cam(600.0)
    z = [0.5, 0.6, 0.7]
    R, t, boxes = _oracle_scene(card, camera, z)
    oracle = OracleKeypointPredictor(card, camera, torch.as_tensor(R), torch.as_tensor(t))
    image = np.zeros((480, 640, 3), np.uint8)
    dets = [Detection(class_id="cat", box=b) for b in boxes]
    out = Estimator(oracle, registry, depth_range=(0.55, 0.65)).estimate(image, camera, dets)
    assert [p.reason for p in out] == ["depth_out_of_range", "", "depth_out_of_range"]
    assert out[0].R is None and out[0].t is None
    np.testing.assert_allclose(out[1].t, t[1], atol=1e-6)
    # without a range every pose is the ground truth
    out = Estimator(oracle, registry).estimate(image, camera, dets)
    assert all(p.ok for p in out)
    np.testing.assert_allclose(np.stack([p.t for p in out]), t, atol=1e-6)


def test_min_box_px_skips_boxes_whose_longer_side_is_shorter(registry, card):
    camera = _cam(600.0)
    R, t, boxes = _oracle_scene(card, camera, [0.6] * 3)
    oracle = OracleKeypointPredictor(card, camera, torch.as_tensor(R), torch.as_tensor(t))
    cx, cy = 320.0, 240.0
    dets = [Detection(class_id="cat", box=(cx - 3.5, cy - 3.5, cx + 3.5, cy + 3.5)),  # 7 x 7 px: skipped
            Detection(class_id="cat", box=(cx - 4.0, cy - 1.0, cx + 4.0, cy + 1.0)),  # 8 x 2 px: longer side 8, kept
            Detection(class_id="cat", box=boxes[2])]
    est = Estimator(oracle, registry, min_box_px=8.0)
    out = est.estimate(np.zeros((480, 640, 3), np.uint8), camera, dets)
    assert [p.reason for p in out] == ["small_box", "", ""]
    np.testing.assert_allclose(out[2].t, t[2], atol=1e-6)


@pytest.mark.parametrize("kwargs,needle", [({"min_box_px": -1.0}, "min_box_px"),
                                           ({"depth_range": (2.0, 1.0)}, "depth_range"),
                                           ({"depth_range": (-1.0, 1.0)}, "depth_range")])
def test_bad_limits_are_refused(registry, card, kwargs, needle):
    oracle = OracleKeypointPredictor(card, _cam(600.0), torch.zeros(1, 3, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=needle):
        Estimator(oracle, registry, **kwargs)
