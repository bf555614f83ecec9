"""Debug drawing: the projected 3D boxes of pose estimates over the image (for ~/debug_image)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.registry import ObjectRegistry

# Edges of the 8 box corners in the keypoint order of docs/conventions.md (bit 2: x, bit 1: y, bit 0: z).
_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def draw_boxes(rgb: np.ndarray, camera: CameraModel, poses: Sequence, registry: ObjectRegistry) -> np.ndarray:
    """Copy of ``rgb`` ``(H, W, 3)`` uint8 with each ``ok`` estimate's 3D box drawn (OpenCV projection,
    with the camera's distortion)."""
    out = np.ascontiguousarray(rgb.copy())
    K, D = np.asarray(camera.K, np.float64), camera.D_numpy()
    for p in poses:
        if not p.ok:
            continue
        corners = np.asarray(registry.get(p.object_id).keypoints[:8], np.float64)
        rvec, _ = cv2.Rodrigues(np.asarray(p.R, np.float64))
        uv, _ = cv2.projectPoints(corners, rvec, np.asarray(p.t, np.float64), K, D if D.size else None)
        uv = uv.reshape(-1, 2)
        if not np.isfinite(uv).all():
            continue
        pts = np.round(uv).astype(np.int32)
        for a, b in _EDGES:
            cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), (0, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(out, str(p.object_name), tuple(map(int, pts[0])), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return out
