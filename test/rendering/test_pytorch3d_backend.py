"""The pytorch3d backend (RenderSettings(backend="pytorch3d")) against OpenCV, pyrender and our renderer.

References: the pixel centres ``cv2.projectPoints`` puts inside a triangle (camera conversion), the
pyrender/OSMesa reference (silhouette, depth, unlit RGB) and the pure PyTorch backend (the shading
model both share, and the soft silhouette).  Gradients: against finite differences of the same
function.

These tests skip when pytorch3d is not installed (``make pytorch3d`` builds it), unless
``POSE6D_REQUIRE_PYTORCH3D=1`` (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pose6d_ros.rendering.pyrender_ref import PyrenderReference  # noqa: I001  (selects OSMesa first)
from pose6d_ros.rendering.mesh import Mesh, pack_meshes
from pose6d_ros.rendering.pytorch3d_backend import available
from pose6d_ros.rendering.renderer import RenderSettings, render

from rendering_helpers import MESH_FILES, intrinsics, load_scaled, random_rotation

_REQUIRED = os.environ.get("POSE6D_REQUIRE_PYTORCH3D") == "1"
pytestmark = pytest.mark.skipif(
    not available() and not _REQUIRED, reason="pytorch3d is not installed (`make pytorch3d` builds it)"
)

P3D = RenderSettings(backend="pytorch3d")
P3D_HARD = RenderSettings(backend="pytorch3d", hard=True)


@pytest.fixture(autouse=True)
def _pytorch3d_present():
    if not available():
        pytest.fail("POSE6D_REQUIRE_PYTORCH3D=1 but pytorch3d does not import: run `make pytorch3d`")


def _coloured(mesh: Mesh) -> Mesh:
    """The mesh with colours that vary over it (a linear ramp of the position, in 1/255 steps as
    pyrender stores them), so that interpolation errors show."""
    v = mesh.vertices.double().numpy()
    c = np.round(255 * (0.15 + 0.8 * (v - v.min(0)) / np.ptp(v, 0))) / 255
    return Mesh.from_arrays(v, mesh.faces.numpy(), c, name=mesh.name)


def _poses(seed: int, n: int, size: int = 128):
    rng = np.random.default_rng(seed)
    R = np.stack([random_rotation(rng) for _ in range(n)])
    t = np.stack([[rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), rng.uniform(0.3, 0.4)] for _ in range(n)])
    return R, t, intrinsics(size)


def _render(mb, obj, R, t, K, size, settings):
    n = len(R)
    return render(mb, torch.full((n,), obj), torch.tensor(R, dtype=torch.float32),
                  torch.tensor(t, dtype=torch.float32), torch.tensor(K, dtype=torch.float32).expand(n, 3, 3),
                  size, settings)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 8 neighbours are in ``mask`` too (away from the outline)."""
    m = np.pad(mask, 1)
    out = mask.copy()
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            out &= m[1 + di : 1 + di + mask.shape[0], 1 + dj : 1 + dj + mask.shape[1]]
    return out


def _same_surface(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` away from its outline and from depth steps (> 2 mm to a 4-neighbour):
    next to an occluding edge two renderers may sample either side of it."""
    step = np.zeros_like(mask)
    step[1:-1, 1:-1] = (np.abs(depth[1:-1, 1:-1, None] - np.stack(
        [depth[:-2, 1:-1], depth[2:, 1:-1], depth[1:-1, :-2], depth[1:-1, 2:]], -1)) > 2e-3).any(-1)
    return _interior(mask) & ~step


@pytest.fixture(scope="module")
def scene():
    pytest.importorskip("pyrender")
    meshes = [_coloured(load_scaled(n)) for n in MESH_FILES]
    yield meshes, pack_meshes(meshes)


# ----------------------------------------------------------------------------- camera conversion
@pytest.mark.parametrize("seed", [0, 1])
def test_triangle_covers_the_pixel_centres_opencv_projects_inside(seed):
    cv2 = pytest.importorskip("cv2")
    V = np.array([[-0.03, -0.02, 0.0], [0.035, -0.01, 0.0], [0.005, 0.033, 0.0]])
    rng = np.random.default_rng(seed)
    R = random_rotation(rng)
    R = R if abs(R[2, 2]) > 0.3 else np.eye(3)
    t = np.array([rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), 0.3])
    # Non-square image, fx != fy, principal point off-centre: every term of the conversion shows.
    K = np.array([[520.0, 0, 31.3 + rng.uniform(-3, 3)], [0, 500.0, 23.6], [0, 0, 1]])
    mb = pack_meshes([Mesh.from_arrays(V, [[0, 1, 2]])])
    out = _render(mb, 0, R[None], t[None], K, (48, 64), P3D_HARD)
    uv, _ = cv2.projectPoints(V, cv2.Rodrigues(R)[0], t, K, None)
    uv = uv.reshape(3, 2)
    jj, ii = np.meshgrid(np.arange(64), np.arange(48))

    def inside(p):
        e = [(p[(k + 1) % 3, 0] - p[k, 0]) * (ii - p[k, 1]) - (p[(k + 1) % 3, 1] - p[k, 1]) * (jj - p[k, 0])
             for k in range(3)]
        return ((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0))

    expected = inside(uv)
    near_edge = expected != inside(uv * 1.0002 - 0.0001 * uv.mean(0))  # centres within ~0.01 px of an edge
    drawn = out.silhouette[0, 0].numpy() > 0.5
    assert expected.sum() > 100
    assert ((drawn != expected) & ~near_edge).sum() == 0
    # Depth of the plane along each pixel's ray (analytic).
    n = R[:, 2]
    rays = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj, float)], -1)
    z = (n @ t) / (rays @ n)
    assert np.allclose(out.depth[0, 0].numpy()[drawn], z[drawn], rtol=1e-5)


def test_camera_conversion_with_extrinsics_projects_like_opencv():
    cv2 = pytest.importorskip("cv2")
    from pose6d_ros.rendering.pytorch3d_backend import opencv_to_pytorch3d_cameras

    rng = np.random.default_rng(5)
    X = rng.uniform(-0.05, 0.05, size=(20, 3))
    R, t = random_rotation(rng), np.array([0.01, -0.02, 0.4])
    K = np.array([[410.0, 0, 37.2], [0, 430.0, 26.9], [0, 0, 1]])
    uv, _ = cv2.projectPoints(X, cv2.Rodrigues(R)[0], t, K, None)
    cams = opencv_to_pytorch3d_cameras(torch.tensor(R[None], dtype=torch.float32),
                                       torch.tensor(t[None], dtype=torch.float32),
                                       torch.tensor(K[None], dtype=torch.float32), (50, 70))
    # pytorch3d's screen space: origin at the image's top-left corner, so pixel j's centre is at j + 0.5.
    screen = cams.transform_points_screen(torch.tensor(X[None], dtype=torch.float32))[0, :, :2].numpy()
    np.testing.assert_allclose(screen - 0.5, uv.reshape(-1, 2), atol=2e-3)
    with pytest.raises(ValueError, match="K"):
        skewed = torch.tensor(K[None], dtype=torch.float32).clone()
        skewed[0, 0, 1] = 1.0
        opencv_to_pytorch3d_cameras(torch.eye(3)[None], torch.zeros(1, 3), skewed, (50, 70))


@pytest.mark.parametrize("shading", [False, True], ids=["unlit", "lit"])
def test_triangle_rgb_is_the_perspective_correct_interpolation_of_its_vertex_colours(shading):
    """Analytic reference: each pixel's ray meets the triangle's plane at a 3D point whose barycentric
    coordinates weight the vertex colours (Gouraud); lit, a flat triangle's colours are all scaled by
    ``ambient + diffuse * |n . l|`` (two-sided Lambert)."""
    V = np.array([[-0.03, -0.02, 0.01], [0.035, -0.01, -0.02], [0.005, 0.033, 0.015]])
    C = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.95]])
    R = random_rotation(np.random.default_rng(4))
    R = R if abs(R[2, 2]) > 0.5 else np.eye(3)
    t = np.array([0.003, -0.002, 0.25])
    K = np.array([[300.0, 0, 31.7], [0, 310.0, 30.2], [0, 0, 1]])
    settings = RenderSettings(backend="pytorch3d", hard=True, shading=shading, ambient=0.3, diffuse=0.7,
                              light_direction=(0.2, 0.1, 1.0))
    out = _render(pack_meshes([Mesh.from_arrays(V, [[0, 1, 2]], C)]), 0, R[None], t[None], K, (64, 64), settings)
    X = V @ R.T + t  # camera frame
    jj, ii = np.meshgrid(np.arange(64), np.arange(64))
    rays = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj, float)], -1)
    n = np.cross(X[1] - X[0], X[2] - X[0])
    P = rays * ((n @ X[0]) / (rays @ n))[..., None]  # the ray's point on the plane
    areas = [np.cross(X[(k + 1) % 3] - P, X[(k + 2) % 3] - P) @ n for k in range(3)]
    bary = np.stack(areas, -1) / (n @ n)
    inside = (bary > 0.02).all(-1)  # away from the edges
    expected = bary @ C
    if shading:
        light = np.array(settings.light_direction) / np.linalg.norm(settings.light_direction)
        expected = expected * (0.3 + 0.7 * abs(n @ light) / np.linalg.norm(n))
    got = out.rgb[0].permute(1, 2, 0).numpy()
    assert inside.sum() > 200
    np.testing.assert_allclose(got[inside], expected[inside], atol=2e-4)


# ----------------------------------------------------------------------------- vs pyrender
@pytest.mark.parametrize("obj", range(len(MESH_FILES)), ids=MESH_FILES)
def test_silhouette_and_depth_match_pyrender(scene, obj):
    """Hard and soft (thresholded at 0.5) silhouettes IoU >= 0.99, depth within 1 mm."""
    meshes, mb = scene
    ref = PyrenderReference(meshes)
    try:
        R, t, K = _poses(obj, 3)
        hard = _render(mb, obj, R, t, K, (128, 128), P3D_HARD)
        soft = _render(mb, obj, R, t, K, (128, 128), P3D)
        for k in range(3):
            frame = ref.render([obj], R[k][None], t[k][None], K, 128, 128)
            a = frame.depth > 0
            b = hard.silhouette[k, 0].numpy() > 0.5
            assert a.sum() > 1500
            assert _iou(a, b) >= 0.99, f"{MESH_FILES[obj]} pose {k}: hard IoU {_iou(a, b):.4f}"
            s = soft.silhouette[k, 0].numpy() > 0.5
            assert _iou(a, s) >= 0.99, f"{MESH_FILES[obj]} pose {k}: soft IoU {_iou(a, s):.4f}"
            sel = _same_surface(frame.depth, a & b)
            dd = np.abs(frame.depth[sel] - hard.depth[k, 0].numpy()[sel])
            assert sel.sum() > 1000 and dd.max() <= 1e-3, f"depth error {dd.max() * 1e3:.3f} mm"
            assert np.array_equal(hard.depth[k, 0].numpy() > 0, b)
    finally:
        ref.close()


# ----------------------------------------------------------------------------- vs our renderer
@pytest.mark.parametrize("obj", range(len(MESH_FILES)), ids=MESH_FILES)
def test_matches_our_renderer_with_the_same_shading(scene, obj):
    """Lit (Lambert + ambient, Gouraud) RGB within 2e-3 where both draw the face colour, depth within
    1 mm, silhouettes identical when thresholded at 0.5 and within 0.15 on average over the soft band
    (pytorch3d's SoftRas sigmoid of the squared distance vs our sigmoid of the distance)."""
    _, mb = scene
    R, t, K = _poses(100 + obj, 3, 96)
    light = dict(light_direction=(0.3, -0.2, 1.0), ambient=0.35, diffuse=0.65, background=(0.2, 0.4, 0.6))
    for hard in (True, False):
        ours = _render(mb, obj, R, t, K, (96, 96), RenderSettings(hard=hard, **light))
        p3d = _render(mb, obj, R, t, K, (96, 96), RenderSettings(backend="pytorch3d", hard=hard, **light))
        for k in range(3):
            a = ours.depth[k, 0].numpy() > 0
            b = p3d.depth[k, 0].numpy() > 0
            assert a.sum() > 800 and _iou(a, b) >= 0.995
            both = _same_surface(ours.depth[k, 0].numpy(), a & b)
            assert np.abs(ours.depth[k, 0].numpy() - p3d.depth[k, 0].numpy())[both].max() <= 1e-3
            sa, sb = ours.silhouette[k, 0].numpy(), p3d.silhouette[k, 0].numpy()
            assert _iou(sa > 0.5, sb > 0.5) >= 0.99
            face = both & (sa >= 1.0)  # ours blends its inner band with the background; pytorch3d does not
            drgb = np.abs(ours.rgb[k].numpy() - p3d.rgb[k].numpy())[:, face]
            assert face.sum() > 500 and np.percentile(drgb, 99.5) <= 2e-3, np.percentile(drgb, 99.5)
            empty = (sa == 0) & (sb == 0)
            bg = np.array(light["background"], dtype=np.float32)[:, None]
            assert np.array_equal(p3d.rgb[k].numpy()[:, empty], np.broadcast_to(bg, (3, int(empty.sum()))))
            if not hard:
                band = (sa > 0.01) & (sa < 0.99)
                assert band.sum() > 100 and np.abs(sa - sb)[band].mean() < 0.15, np.abs(sa - sb)[band].mean()
                assert sb[b].min() >= 0.5 and sb[~b].max() <= 0.5  # 0.5: a pixel centre on an edge


def test_outputs_follow_the_contract():
    mb = pack_meshes([load_scaled("duck.obj")])
    R, t, K = _poses(3, 2, 32)
    out = render(mb, torch.zeros(2, dtype=torch.long), torch.tensor(R), torch.tensor(t),
                 torch.tensor(K).expand(2, 3, 3), (32, 40), P3D)
    assert out.rgb.shape == (2, 3, 32, 40) and out.silhouette.shape == (2, 1, 32, 40)
    assert out.depth.shape == (2, 1, 32, 40) and out.rgb.dtype == torch.float64
    assert float(out.silhouette.min()) >= 0 and float(out.silhouette.max()) <= 1
    assert float(out.rgb.min()) >= 0 and float(out.rgb.max()) <= 1
    empty = render(mb, torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, 3), torch.zeros(0, 3),
                   torch.zeros(0, 3, 3), (8, 9), P3D)
    assert empty.rgb.shape == (0, 3, 8, 9) and empty.depth.shape == (0, 1, 8, 9)


def test_missing_pytorch3d_is_a_clear_import_error(monkeypatch):
    for name in [m for m in sys.modules if m == "pytorch3d" or m.startswith("pytorch3d.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pytorch3d", None)
    mb = pack_meshes([load_scaled("duck.obj")])
    with pytest.raises(ImportError, match="make pytorch3d"):
        render(mb, torch.zeros(1, dtype=torch.long), torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.3]]),
               torch.tensor(intrinsics(32), dtype=torch.float32)[None], (32, 32), P3D)


# ----------------------------------------------------------------------------- gradients
def _axis_angle(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable (w != 0)."""
    th = w.norm()
    k = w / th
    zero = torch.zeros((), dtype=w.dtype)
    Kx = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                      torch.stack([-k[1], k[0], zero])])
    return torch.eye(3, dtype=w.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * Kx @ Kx


def test_gradients_reach_the_pose_and_match_finite_differences():
    """Gradient of a weighted sum of silhouette, RGB and depth w.r.t. (rotation vector, t): finite,
    nonzero in both parts, and equal to central finite differences along itself and along each axis.

    The pixels summed are those where the outputs are continuous in the pose: covered pixels 2 px
    or more inside the outline and away from depth steps (depth and colour interpolate over faces)
    and uncovered pixels 1 px or more outside it (the silhouette's distance to the nearest face).
    At the outline the hard coverage switches, which a gradient does not see (the depth is a hard
    z-buffer in both backends).  Unlit: the two-sided Lambert term of the shared shading model
    switches where a vertex turns edge-on, in both backends."""
    mb = pack_meshes([_coloured(load_scaled("duck.obj"))])
    rng = np.random.default_rng(11)
    R0 = torch.tensor(random_rotation(rng))
    K = torch.tensor(intrinsics(64))[None]
    idx = torch.zeros(1, dtype=torch.long)
    x0 = torch.tensor([0.02, -0.015, 0.01, 0.004, 0.002, 0.35], dtype=torch.float64)
    unlit = RenderSettings(backend="pytorch3d", shading=False)

    def outputs(x: torch.Tensor):
        o = render(mb, idx, (_axis_angle(x[:3]) @ R0)[None], x[3:][None], K, (64, 64), unlit)
        return o.silhouette[0, 0], o.rgb[0], o.depth[0, 0]

    with torch.no_grad():
        sil, _, depth = outputs(x0)
    cov = (depth > 0).numpy()
    inner = torch.from_numpy(_interior(_same_surface(depth.numpy(), cov)))
    # Uncovered, not next to a covered pixel, and at least 1 px from the outline (s = sigmoid(-d^2/sigma^2)).
    outer = torch.from_numpy(_interior(~cov)) & (sil > 1e-3) & (sil < 1 / (1 + np.exp(1 / 0.7**2)))
    w = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 1.5, size=(64, 64)))
    assert int(inner.sum()) > 200 and int(outer.sum()) > 50

    def loss(x: torch.Tensor) -> torch.Tensor:
        s, c, d = outputs(x)
        return 100.0 * (w * s)[outer].sum() + 10.0 * (w * c.sum(0))[inner].sum() + 100.0 * (w * d)[inner].sum()

    x = x0.clone().requires_grad_(True)
    loss(x).backward()
    g = x.grad.clone()
    assert torch.isfinite(g).all()
    assert float(g[:3].abs().max()) > 0 and float(g[3:].abs().max()) > 0
    h = 1e-4  # up to ~0.05 px of motion
    for direction in [g / g.norm()] + list(torch.eye(6, dtype=torch.float64)):
        with torch.no_grad():
            fd = (loss(x0 + h * direction) - loss(x0 - h * direction)) / (2 * h)
        assert float(fd) == pytest.approx(float(g @ direction), rel=0.05, abs=2e-3 * float(g.norm()))


# ----------------------------------------------------------------------------- training
def test_one_self_supervised_step_runs_with_backend_pytorch3d(monkeypatch):
    """``selfsup.render.backend: pytorch3d`` reaches the renderer of a training step, and the step's
    loss sends finite, nonzero gradients to the network through it."""
    import trimesh

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "training"))
    import _training_doubles as D

    from pose6d_ros.geometry.pnp import solve_pnp
    from pose6d_ros.training.config import RenderSection
    from pose6d_ros.training.selfsup import build_renderer
    from pose6d_ros.training.selfsup_step import SelfSupSettings, SelfSupStep

    box = trimesh.creation.box(extents=(2 * D.HALF, 1.6 * D.HALF, 1.2 * D.HALF))
    box.visual.vertex_colors = np.clip(255 * (np.asarray(box.vertices) / (2 * D.HALF) + 0.5), 0, 255).astype(np.uint8)
    obj = SimpleNamespace(name="box", load_mesh=lambda: box)
    objects = SimpleNamespace(ids=[1], registry=SimpleNamespace(get=lambda oid: obj))
    render_fn = build_renderer(objects, RenderSection(backend="pytorch3d", sigma=0.7), torch.device("cpu"))
    seen = []

    def spy(obj_index, R, t, K, size):  # records which backend rendered, passes everything through
        out = render_fn(obj_index, R, t, K, size)
        seen.append(out.fragments is None)  # the pytorch3d backend returns no fragments, ours does
        return out

    torch.manual_seed(0)
    model = D.TinyPhi()
    real, _ = D.real_batch(4)
    step = SelfSupStep(settings=SelfSupSettings(use_occlusion=False, use_percep=False, use_sup_synthetic=False,
                                                use_pose2=False, use_sup_render=False),
                       keypoints_3d=D.keypoints_3d(), render_fn=spy, pnp_fn=solve_pnp)
    out = step(SimpleNamespace(model=model, state={}), {"real": real})
    out.losses["total"].backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert seen and all(seen)
    assert torch.isfinite(out.losses["total"]) and torch.isfinite(g).all() and float(g.abs().max()) > 0
    assert out.metrics["valid_frac"] == 1.0 and out.metrics["mask_mean"] > 0.05
