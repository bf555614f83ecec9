"""The differentiable renderer against pyrender, a naive all-pairs reference, and itself batched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pose6d_ros.rendering.pyrender_ref import PyrenderReference  # noqa: I001  (selects OSMesa first)
from pose6d_ros.rendering.mesh import Mesh, pack_meshes
from pose6d_ros.rendering.renderer import RenderSettings, render

from rendering_helpers import MESH_FILES, intrinsics, load_scaled, random_rotation


# ----------------------------------------------------------------------------- vs pyrender
@pytest.fixture(scope="module")
def scene5():
    pytest.importorskip("pyrender")
    meshes = [load_scaled(n) for n in MESH_FILES]
    ref = PyrenderReference(meshes)
    yield meshes, pack_meshes(meshes), ref
    ref.close()


@pytest.mark.parametrize("obj", range(len(MESH_FILES)), ids=MESH_FILES)
def test_hard_silhouette_and_depth_match_pyrender(scene5, obj):
    meshes, mb, ref = scene5
    rng = np.random.default_rng(obj)
    K = intrinsics(128)
    Rs, ts = [], []
    for _ in range(5):
        Rs.append(random_rotation(rng))
        ts.append(np.array([rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01), rng.uniform(0.3, 0.4)]))
    out = render(
        mb,
        torch.full((5,), obj),
        torch.tensor(np.stack(Rs), dtype=torch.float32),
        torch.tensor(np.stack(ts), dtype=torch.float32),
        torch.tensor(K, dtype=torch.float32).expand(5, 3, 3),
        (128, 128),
        RenderSettings(hard=True),
    )
    for k in range(5):
        frame = ref.render([obj], Rs[k][None], ts[k][None], K, 128, 128)
        a = frame.depth > 0
        b = out.silhouette[k, 0].numpy() > 0.5
        assert a.sum() > 1500  # the object fills a good part of the frame
        iou = (a & b).sum() / (a | b).sum()
        assert iou >= 0.99, f"{MESH_FILES[obj]} pose {k}: IoU {iou:.4f}"
        both = a & b
        dd = np.abs(frame.depth[both] - out.depth[k, 0].numpy()[both])
        assert np.median(dd) < 1e-3
        assert np.all((out.depth[k, 0].numpy() > 0) == b)


# ----------------------------------------------------------------------------- naive reference
def _contour_edges(faces: np.ndarray, uv: np.ndarray) -> list:
    """Edges whose two faces lie on the same side of them in the image (or border edges)."""
    adj: dict = {}
    for f in faces:
        for k in range(3):
            a, b, o = f[k], f[(k + 1) % 3], f[(k + 2) % 3]
            adj.setdefault((min(a, b), max(a, b)), []).append(o)
    out = []
    for (a, b), opp in adj.items():
        e = uv[b] - uv[a]
        side = [e[0] * (uv[o][1] - uv[a][1]) - e[1] * (uv[o][0] - uv[a][0]) for o in opp]
        if len(opp) == 1 or side[0] * side[1] >= 0:
            out.append((a, b))
    return out


def naive_render(mesh: Mesh, R, t, K, size, sigma, margin_sigmas):
    """Every pixel against every face and every contour edge, one image, autograd through all."""
    H, W = size
    V = mesh.vertices.to(R.dtype)
    F = mesh.faces
    X = V @ R.T + t
    uv = torch.stack([K[0, 0] * X[:, 0] / X[:, 2] + K[0, 2], K[1, 1] * X[:, 1] / X[:, 2] + K[1, 2]], -1)
    z = X[:, 2]
    jj, ii = torch.meshgrid(torch.arange(W, dtype=R.dtype), torch.arange(H, dtype=R.dtype), indexing="xy")
    p = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1)  # (P, 2) pixel centres
    a, b, c = uv[F[:, 0]], uv[F[:, 1]], uv[F[:, 2]]

    def cross(o, q, r):  # (P, F)
        return (q[None, :, 0] - o[None, :, 0]) * (r[:, None, 1] - o[None, :, 1]) - (
            q[None, :, 1] - o[None, :, 1]
        ) * (r[:, None, 0] - o[None, :, 0])

    w0, w1, w2 = cross(b, c, p), cross(c, a, p), cross(a, b, p)
    inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
    s = w0 + w1 + w2
    invz = (w0 / z[F[:, 0]] + w1 / z[F[:, 1]] + w2 / z[F[:, 2]]) / s
    invz_m = torch.where(inside, invz, torch.full_like(invz, -1.0))
    best, face = invz_m.max(1)
    covered = best > 0
    depth = torch.where(covered, 1.0 / best.clamp(min=1e-9), torch.zeros_like(best))

    edges = _contour_edges(F.numpy(), uv.detach().numpy())
    ea = uv[[e[0] for e in edges]]
    eb = uv[[e[1] for e in edges]]
    d = p[:, None, :] - ea[None]
    ev = (eb - ea)[None]
    sp = ((d * ev).sum(-1) / (ev * ev).sum(-1)).clamp(0, 1)
    dist2 = ((d - sp[..., None] * ev) ** 2).sum(-1)  # (P, E)
    m = margin_sigmas * sigma
    big = torch.full_like(dist2, 1e9)
    out_d = torch.where(covered[:, None] | (dist2 >= m * m), big, dist2)
    out_min, out_arg = out_d.min(1)
    outer = torch.zeros(len(edges), dtype=torch.bool)
    outer[out_arg[out_min < 1e8]] = True
    in_d = torch.where(~covered[:, None] | (dist2 >= m * m) | ~outer[None], big, dist2)
    in_min, _ = in_d.min(1)
    dmin = torch.where(covered, in_min, out_min)
    band = dmin < 1e8
    sd = torch.where(covered, 1.0, -1.0) * torch.sqrt(dmin.clamp(max=1e8) + 1e-12)
    lo = 1.0 / (1.0 + math.exp(margin_sigmas))
    soft = ((torch.sigmoid(sd / sigma) - lo) / (1 - 2 * lo)).clamp(0, 1)
    sil = torch.where(band, soft, covered.to(R.dtype))
    return sil.view(H, W), depth.view(H, W), covered.view(H, W)


def _tiny_mesh() -> Mesh:
    ico = trimesh.creation.icosphere(subdivisions=1)
    v = ico.vertices * np.array([0.02, 0.03, 0.015])
    v[:, 0] += 0.01 * v[:, 1] / 0.03  # shear, so no symmetry hides a wrong edge
    return Mesh.from_arrays(v, ico.faces)


def _axis_angle(w: torch.Tensor) -> torch.Tensor:
    th = torch.sqrt((w * w).sum() + 1e-20)
    k = w / th
    Kx = torch.zeros(3, 3, dtype=w.dtype)
    Kx = torch.stack(
        [torch.stack([0 * th, -k[2], k[1]]), torch.stack([k[2], 0 * th, -k[0]]), torch.stack([-k[1], k[0], 0 * th])]
    )
    return torch.eye(3, dtype=w.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * Kx @ Kx


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_all_pairs_forward_and_backward(seed):
    rng = np.random.default_rng(seed)
    mesh = _tiny_mesh()
    mb = pack_meshes([mesh], dtype=torch.float64)
    H, W = 24, 28
    K = torch.tensor([[230.0, 0, 13.6], [0, 240.0, 11.3], [0, 0, 1]], dtype=torch.float64)
    R0 = torch.tensor(random_rotation(rng), dtype=torch.float64)
    t0 = torch.tensor([0.001, -0.002, 0.5], dtype=torch.float64)
    settings = RenderSettings(sigma=0.8, margin=3.0)
    wts = torch.tensor(rng.uniform(0.5, 1.5, size=(H, W)))

    grads = []
    outs = []
    for impl in ("ours", "naive"):
        w = torch.tensor([0.01, -0.02, 0.015], dtype=torch.float64, requires_grad=True)
        t = t0.clone().requires_grad_(True)
        R = _axis_angle(w) @ R0
        if impl == "ours":
            o = render(mb, torch.zeros(1, dtype=torch.long), R[None], t[None], K[None], (H, W), settings)
            sil, depth = o.silhouette[0, 0], o.depth[0, 0]
        else:
            sil, depth, _ = naive_render(mesh, R, t, K, (H, W), settings.sigma, settings.margin)
        loss = (sil * wts).sum() + 10.0 * (depth * wts).sum()
        loss.backward()
        outs.append((sil.detach(), depth.detach()))
        grads.append(torch.cat([w.grad, t.grad]))
    (s1, d1), (s2, d2) = outs
    assert (s2 > 0).sum() > 60
    assert torch.allclose(s1, s2, atol=1e-6)
    assert torch.allclose(d1, d2, atol=1e-9)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6), (grads[0], grads[1])
    assert grads[0].abs().max() > 0


def test_soft_silhouette_gradient_matches_finite_differences():
    mesh = _tiny_mesh()
    mb = pack_meshes([mesh], dtype=torch.float64)
    K = torch.tensor([[230.0, 0, 13.6], [0, 240.0, 11.3], [0, 0, 1]], dtype=torch.float64)[None]
    R = torch.eye(3, dtype=torch.float64)[None]
    settings = RenderSettings(sigma=1.0)
    wts = torch.linspace(0.2, 1.0, 24 * 28, dtype=torch.float64).view(24, 28)

    def f(t):
        o = render(mb, torch.zeros(1, dtype=torch.long), R, t[None], K, (24, 28), settings)
        return (o.silhouette[0, 0] * wts).sum()

    t = torch.tensor([0.001, -0.002, 0.5], dtype=torch.float64, requires_grad=True)
    f(t).backward()
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = 1e-6
        fd = (f(t.detach() + e) - f(t.detach() - e)) / 2e-6
        assert float(t.grad[i]) == pytest.approx(float(fd), rel=0.05, abs=1e-2)


# ----------------------------------------------------------------------------- consistency
def test_batched_equals_one_at_a_time():
    meshes = [load_scaled("bunny.obj"), load_scaled("lego/lego.obj")]
    mb = pack_meshes(meshes)
    rng = np.random.default_rng(7)
    B = 4
    idx = torch.tensor([0, 1, 1, 0])
    R = torch.tensor(np.stack([random_rotation(rng) for _ in range(B)]), dtype=torch.float32)
    t = torch.tensor([[0.0, 0.0, 0.3], [0.01, 0.0, 0.35], [0.0, -0.01, 0.4], [0.005, 0.0, 0.32]])
    K = torch.stack([torch.tensor(intrinsics(64, f), dtype=torch.float32) for f in (140, 150, 160, 170)])
    R.requires_grad_(True)
    out = render(mb, idx, R, t, K, (64, 64))
    (out.silhouette.sum() + out.rgb.sum() + out.depth.sum()).backward()
    g_batched = R.grad.clone()
    for k in range(B):
        Rk = R.detach()[k : k + 1].clone().requires_grad_(True)
        o = render(mb, idx[k : k + 1], Rk, t[k : k + 1], K[k : k + 1], (64, 64))
        (o.silhouette.sum() + o.rgb.sum() + o.depth.sum()).backward()
        # Equal up to float rounding (batched matrix products may sum in another order).
        assert torch.allclose(o.silhouette[0], out.silhouette[k], atol=1e-4)
        assert torch.allclose(o.depth[0], out.depth[k], atol=1e-6)
        assert torch.allclose(o.rgb[0], out.rgb[k], atol=1e-4)
        assert torch.allclose(Rk.grad[0], g_batched[k], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cpu_and_cuda_agree():
    mb = pack_meshes([load_scaled("duck.obj")])
    rng = np.random.default_rng(1)
    R = torch.tensor(random_rotation(rng), dtype=torch.float32)[None]
    t = torch.tensor([[0.0, 0.0, 0.35]])
    K = torch.tensor(intrinsics(128), dtype=torch.float32)[None]
    a = render(mb, torch.zeros(1, dtype=torch.long), R, t, K, (128, 128))
    b = render(mb, torch.zeros(1, dtype=torch.long, device="cuda"), R.cuda(), t.cuda(), K.cuda(), (128, 128))
    assert (a.silhouette - b.silhouette.cpu()).abs().max() < 1e-3
    assert (a.depth - b.depth.cpu()).abs().max() < 1e-4


def test_bad_inputs_are_named():
    mb = pack_meshes([_tiny_mesh()])
    R, t, K = torch.eye(3)[None], torch.zeros(1, 3), torch.eye(3)[None]
    with pytest.raises(ValueError, match="R"):
        render(mb, torch.zeros(1, dtype=torch.long), torch.eye(3), t, K, (8, 8))
    with pytest.raises(ValueError, match="object_index"):
        render(mb, torch.tensor([3]), R, t, K, (8, 8))


def test_camera_inside_a_closed_mesh_sees_its_walls():
    # Back faces of closed meshes are skipped only when the camera is outside: from the centre of a
    # 1 m cube every ray meets the wall at z = 0.5 (|x/z|, |y/z| <= 0.16 here), a back face.
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    mb = pack_meshes([Mesh.from_arrays(np.asarray(box.vertices), np.asarray(box.faces))])
    assert float(mb.closed_sign[0]) == 1.0
    K = torch.tensor([[100.0, 0.0, 15.5], [0.0, 100.0, 15.5], [0.0, 0.0, 1.0]])[None]
    out = render(mb, torch.zeros(1, dtype=torch.long), torch.eye(3)[None], torch.zeros(1, 3), K, (32, 32),
                 RenderSettings(hard=True))
    assert bool((out.silhouette == 1).all())
    assert torch.allclose(out.depth, torch.full_like(out.depth, 0.5), atol=1e-5)


def test_empty_batch_renders_empty_images():
    mb = pack_meshes([_tiny_mesh()])
    e = torch.zeros(0, 3, 3)
    out = render(mb, torch.zeros(0, dtype=torch.long), e, torch.zeros(0, 3), e, (8, 9))
    assert out.rgb.shape == (0, 3, 8, 9) and out.silhouette.shape == (0, 1, 8, 9) and out.depth.shape == (0, 1, 8, 9)
