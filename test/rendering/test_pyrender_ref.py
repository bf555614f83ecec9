"""The pyrender reference is pixel-aligned with OpenCV and renders several objects per frame."""

from __future__ import annotations

import numpy as np
import pytest

# Imported first: it selects OSMesa before anything imports OpenGL.
from pose6d_ros.rendering.pyrender_ref import Light, Material, PyrenderReference  # noqa: I001
from pose6d_ros.rendering.mesh import Mesh

cv2 = pytest.importorskip("cv2")
pytest.importorskip("pyrender", reason="pyrender + OSMesa is the reference renderer")

from rendering_helpers import load_scaled, random_rotation  # noqa: E402


def _inside(uv: np.ndarray, jj: np.ndarray, ii: np.ndarray) -> np.ndarray:
    e = []
    for k in range(3):
        a, b = uv[k], uv[(k + 1) % 3]
        e.append((b[0] - a[0]) * (ii - a[1]) - (b[1] - a[1]) * (jj - a[0]))
    return ((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0))


@pytest.fixture(scope="module")
def triangle_ref():
    V = np.array([[-0.03, -0.02, 0.0], [0.035, -0.01, 0.0], [0.005, 0.033, 0.0]])
    ref = PyrenderReference([Mesh.from_arrays(V, [[0, 1, 2]])])
    yield V, ref
    ref.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triangle_covers_exactly_the_pixel_centres_opencv_projects_inside(triangle_ref, seed):
    V, ref = triangle_ref
    rng = np.random.default_rng(seed)
    R = random_rotation(rng)
    R = R if R[2, 2] > 0.3 else np.eye(3)  # keep the triangle facing the camera roughly
    t = np.array([rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), 0.3])
    K = np.array([[520.0, 0, 31.3 + rng.uniform(-3, 3)], [0, 500.0, 33.6], [0, 0, 1]])
    frame = ref.render([0], R[None], t[None], K, 64, 48)
    rvec, _ = cv2.Rodrigues(R)
    uv, _ = cv2.projectPoints(V, rvec, t, K, None)
    uv = uv.reshape(3, 2)
    jj, ii = np.meshgrid(np.arange(64), np.arange(48))
    inside = _inside(uv, jj, ii)
    drawn = frame.depth > 0
    assert inside.sum() > 100
    # Pixel centres within 0.01 px of an edge may go either way.
    near_edge = _inside(uv + 0.0, jj, ii) != _inside(uv * 1.0002 - 0.0001 * uv.mean(0), jj, ii)
    assert ((drawn != inside) & ~near_edge).sum() == 0
    assert np.array_equal(frame.labels > 0, drawn)
    # Depth of a plane at the pixel: distance along the optical axis.
    n = R[:, 2]
    rays = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj, float)], -1)
    z = (n @ t) / (rays @ n)
    assert np.allclose(frame.depth[drawn], z[drawn], rtol=1e-4)


def test_vertex_projects_onto_the_drawn_pixel():
    duck = load_scaled("duck.obj")
    ref = PyrenderReference([duck])
    rng = np.random.default_rng(3)
    K = np.array([[300.0, 0, 63.2], [0, 310.0, 64.1], [0, 0, 1]])
    R = random_rotation(rng)
    t = np.array([0.004, -0.003, 0.35])
    frame = ref.render([0], R[None], t[None], K, 128, 128)
    v = duck.vertices.double().numpy()
    uv, _ = cv2.projectPoints(v, cv2.Rodrigues(R)[0], t, K, None)
    uv = uv.reshape(-1, 2)
    z = (v @ R.T + t)[:, 2]
    # Vertices visible at their own pixel: the rendered depth there equals the vertex depth.
    px = np.round(uv).astype(int)
    ok = (px[:, 0] >= 0) & (px[:, 0] < 128) & (px[:, 1] >= 0) & (px[:, 1] < 128)
    d = frame.depth[px[ok, 1], px[ok, 0]]
    visible = np.abs(d - z[ok]) < 2e-4
    assert visible.sum() > 50
    # The leftmost drawn column is the first pixel centre right of the extreme-left vertex (a
    # half-pixel shift, OpenGL's j + 0.5 sampling, would draw the column before it).
    cols = np.flatnonzero((frame.depth > 0).any(0))
    assert np.ceil(uv[:, 0].min()) <= cols[0] <= np.ceil(uv[:, 0].min()) + 1
    ref.close()


def test_several_objects_occlusion_and_options():
    bunny, duck = load_scaled("bunny.obj"), load_scaled("duck.obj")
    ref = PyrenderReference(
        [bunny, duck],
        materials={1: Material(metallic=0.2, roughness=0.3)},
        lights=[
            Light("spot", color=(1.0, 0.9, 0.8), intensity=20.0, position=(0.1, -0.1, 0.0), shadows=True),
            Light("point", color=(0.5, 0.5, 1.0), intensity=5.0, position=(-0.1, 0.0, 0.1)),
        ],
    )
    K = np.array([[300.0, 0, 63.5], [0, 300.0, 63.5], [0, 0, 1]])
    R = np.stack([np.eye(3), np.eye(3), np.eye(3)])
    t = np.array([[0.0, 0.0, 0.40], [0.03, 0.0, 0.30], [-0.06, 0.0, 0.50]])
    frame = ref.render([0, 1, 0], R, t, K, 128, 128)
    alone = ref.render([0], R[:1], t[:1], K, 128, 128)
    m0, m1, m2 = frame.mask(0), frame.mask(1), frame.mask(2)
    assert m0.sum() > 0 and m1.sum() > 0 and m2.sum() > 0
    # The nearer duck hides part of the bunny: the bunny's visible mask shrinks.
    assert m0.sum() < alone.mask(0).sum()
    assert not (m0 & m1).any()
    assert np.all(frame.depth[m1] < 0.36)
    assert frame.rgb.shape == (128, 128, 3) and frame.rgb.dtype == np.uint8
    ref.close()


def test_vertex_colours_reach_the_image():
    """A red and a blue mesh under white light render red and blue (pyrender drops vertex colours when a
    mesh is built with a material; the reference must not)."""
    duck = load_scaled("duck.obj")
    V, F = duck.vertices.numpy(), duck.faces.numpy()
    red = Mesh.from_arrays(V, F, np.tile([0.9, 0.1, 0.1], (len(V), 1)))
    blue = Mesh.from_arrays(V, F, np.tile([0.1, 0.1, 0.9], (len(V), 1)))
    ref = PyrenderReference([red, blue], lights=[Light("directional", intensity=3.0)])
    K = np.array([[300.0, 0, 63.5], [0, 300.0, 63.5], [0, 0, 1]])
    frame = ref.render([0, 1], np.stack([np.eye(3)] * 2), np.array([[-0.04, 0.0, 0.4], [0.04, 0.0, 0.4]]), K,
                       128, 128)
    ref.close()
    r, b = frame.rgb[frame.mask(0)].astype(float).mean(0), frame.rgb[frame.mask(1)].astype(float).mean(0)
    assert frame.mask(0).sum() > 100 and frame.mask(1).sum() > 100
    assert r[0] > 2 * r[2] and r[0] > 2 * r[1], r
    assert b[2] > 2 * b[0] and b[2] > 2 * b[1], b
