"""Geometry core: camera model, box keypoints, batched differentiable PnP, BOP pose metrics.

ROS-free and batched in torch; conventions in ``docs/conventions.md``.
"""

from pose6d_ros.geometry.camera import (CameraModel, crop_affine, crop_intrinsics, distort_points,
                                        normalized_to_pixels, pixels_to_normalized,
                                        undistort_points)
from pose6d_ros.geometry.keypoints import box_keypoints, project_points, transform_points
from pose6d_ros.geometry.pnp import PnPLayer, PnPResult, solve_pnp

__all__ = [
    "CameraModel", "crop_affine", "crop_intrinsics", "distort_points", "normalized_to_pixels",
    "pixels_to_normalized", "undistort_points", "box_keypoints", "project_points",
    "transform_points", "PnPLayer", "PnPResult", "solve_pnp",
]
