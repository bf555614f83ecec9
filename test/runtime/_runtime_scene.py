"""Objects, model card and camera shared by the runtime tests (a plain module: fixtures and
module-scoped fixtures both build from it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.models import ModelCard
from pose6d_ros.registry import ObjectInfo, ObjectRegistry


def box_object(obj_id: int, name: str, half_extents) -> ObjectInfo:
    hx, hy, hz = half_extents
    kp = np.array([[x, y, z] for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)] + [[0, 0, 0]],
                  dtype=np.float64) + np.array([0.001, -0.002, 0.003])  # box centre off the origin
    return ObjectInfo(id=obj_id, name=name, mesh_path=Path("unused.obj"), units="m", scale=1.0,
                      diameter=2 * float(np.linalg.norm(half_extents)), symmetries_discrete=np.zeros((0, 4, 4)),
                      symmetries_continuous=(), keypoints=kp)


def make_registry() -> ObjectRegistry:
    return ObjectRegistry([box_object(1, "duck", (0.03, 0.025, 0.02)),
                           box_object(5, "can", (0.02, 0.02, 0.05)),
                           box_object(7, "cat", (0.035, 0.02, 0.03)),
                           box_object(9, "glue", (0.01, 0.03, 0.015))])


def make_card(registry: ObjectRegistry, **extra) -> ModelCard:
    """A model of three of the four registry objects (glue is left out)."""
    return ModelCard.create(object_ids=[1, 5, 7], object_names=["duck", "can", "cat"],
                            keypoints=registry.keypoints([1, 5, 7]), crop_size=64, backbone="resnet18",
                            conditioning="cin", extra=extra)


def make_camera() -> CameraModel:
    K = np.array([[600.0, 0.0, 322.5], [0.0, 605.0, 237.0], [0.0, 0.0, 1.0]])
    return CameraModel(K=K, width=640, height=480, distortion_model="plumb_bob",
                       D=np.array([-0.25, 0.08, 0.001, -0.0015, 0.0]))
