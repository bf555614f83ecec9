"""Gradient descent through the soft silhouette recovers a pose from 10 deg / 2 cm off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.rendering.pyrender_ref import PyrenderReference  # noqa: I001  (selects OSMesa first)
from pose6d_ros.rendering.mesh import decimate, pack_meshes
from pose6d_ros.rendering.renderer import RenderSettings, render

from rendering_helpers import intrinsics, load_scaled, random_rotation


def _rodrigues(w: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` axis-angle -> ``(B, 3, 3)``."""
    th = torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-12)
    k = w / th
    z = torch.zeros_like(k[:, 0])
    Kx = torch.stack(
        [torch.stack([z, -k[:, 2], k[:, 1]], -1), torch.stack([k[:, 2], z, -k[:, 0]], -1),
         torch.stack([-k[:, 1], k[:, 0], z], -1)], 1
    )
    s, c = torch.sin(th)[..., None], torch.cos(th)[..., None]
    return torch.eye(3, dtype=w.dtype) + s * Kx + (1 - c) * Kx @ Kx


def _angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(Ra.T @ Rb) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


@pytest.mark.slow
def test_silhouette_fitting_recovers_pose_from_pyrender_targets():
    pytest.importorskip("pyrender")
    names = ["duck.obj", "bunny.obj", "lego/lego.obj"]
    full = [load_scaled(n) for n in names]
    # Targets from pyrender with the full meshes; the fit renders decimated ones (as training will).
    ref = PyrenderReference(full)
    fit_meshes = pack_meshes([decimate(m, 1000) for m in full])
    rng = np.random.default_rng(11)
    S = 64
    K = intrinsics(S, f=300.0)
    B = len(names)
    R_true = np.stack([random_rotation(rng) for _ in range(B)])
    t_true = np.array([[0.005, -0.004, 0.35], [-0.006, 0.003, 0.34], [0.0, 0.006, 0.36]])
    target = torch.tensor(
        np.stack([ref.render([i], R_true[i : i + 1], t_true[i : i + 1], K, S, S).depth > 0 for i in range(B)]),
        dtype=torch.float32,
    )[:, None]
    ref.close()

    # Start 10 degrees (random axis) and 2 cm (random direction) off.
    axes = rng.normal(size=(B, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dirs = rng.normal(size=(B, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    R0 = torch.tensor(R_true, dtype=torch.float32)
    R0 = _rodrigues(torch.tensor(axes * np.radians(10.0), dtype=torch.float32)) @ R0
    t0 = torch.tensor(t_true + 0.02 * dirs, dtype=torch.float32)

    w = torch.zeros(B, 3, requires_grad=True)
    t = t0.clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [w], "lr": 0.01}, {"params": [t], "lr": 0.002}])
    idx = torch.arange(B)
    Kt = torch.tensor(K, dtype=torch.float32).expand(B, 3, 3)
    # Converged by 200 steps: 300 steps ended within 0.03 deg / 0.03 mm of the same errors
    # (duck 1.7 deg / 3.3 mm, bunny 0.4 / 0.5, lego 0.6 / 1.1).
    steps = 200
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for it in range(steps):
        sigma = 2.0 if it < steps // 3 else 0.7
        out = render(fit_meshes, idx, _rodrigues(w) @ R0, t, Kt, (S, S), RenderSettings(sigma=sigma))
        loss = ((out.silhouette - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    R_fit = (_rodrigues(w) @ R0).detach().numpy()
    t_fit = t.detach().numpy()
    for i in range(B):
        rot = _angle_deg(R_fit[i], R_true[i])
        trans = np.linalg.norm(t_fit[i] - t_true[i])
        assert rot < 2.0 and trans < 0.005, f"{names[i]}: {rot:.2f} deg, {trans * 1000:.1f} mm"
