"""Shared helpers for the rendering tests: pybullet_data meshes scaled to 10 cm, random poses."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pose6d_ros.rendering.mesh import Mesh, load_mesh

MESH_FILES = ["duck.obj", "bunny.obj", "lego/lego.obj", "torus/torus_textured.obj", "teddy2_VHACD_CHs.obj"]


def data_path(name: str) -> str:
    pybullet_data = pytest.importorskip("pybullet_data", reason="pybullet_data holds the test meshes")
    return os.path.join(pybullet_data.getDataPath(), name)


def load_scaled(name: str, diameter: float = 0.1) -> Mesh:
    """A pybullet_data mesh scaled to ``diameter`` metres and centred on its bounding box."""
    m = load_mesh(data_path(name))
    v = m.vertices.double().numpy()
    v = (v - 0.5 * (v.min(0) + v.max(0))) * (diameter / m.diameter)
    return Mesh.from_arrays(v, m.faces.numpy(), m.vertex_colors.numpy(), name=name)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def intrinsics(size: int, f: float = 300.0) -> np.ndarray:
    s = size / 128.0
    return np.array([[f * s, 0.0, 0.5 * size - 0.3], [0.0, 1.03 * f * s, 0.5 * size - 0.7], [0.0, 0.0, 1.0]])
