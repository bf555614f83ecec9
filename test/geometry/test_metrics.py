"""Pose-error metrics on hand-built cases and against a plain NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pose6d_ros.geometry import metrics as M


def _rot(axis, deg):
    return torch.from_numpy(Rotation.from_rotvec(np.deg2rad(deg) * np.asarray(axis, float)).as_matrix())


def _cube_pts():
    g = np.linspace(-0.05, 0.05, 5)
    return torch.from_numpy(np.array([[x, y, z] for x in g for y in g for z in g]))


def test_known_translation_offset():
    pts = _cube_pts()
    R = torch.eye(3, dtype=torch.float64)[None]
    t_gt = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    t_est = t_gt + torch.tensor([[0.003, -0.004, 0.0]], dtype=torch.float64)  # 5 mm
    assert M.add(R, t_est, R, t_gt, pts).item() == pytest.approx(0.005)
    assert M.mssd(R, t_est, R, t_gt, pts).item() == pytest.approx(0.005)
    assert M.te(t_est, t_gt).item() == pytest.approx(0.005)
    assert M.re(R, R).item() == pytest.approx(0.0, abs=1e-6)
    # ADI <= ADD, and for a pure translation smaller than the point spacing it equals ADD
    assert M.adi(R, t_est, R, t_gt, pts).item() == pytest.approx(0.005)
    K = torch.tensor([[[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]], dtype=torch.float64)
    # all points at depth z: a lateral 5 mm offset moves every projection by f * 0.005 / z
    flat = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.01, 0.0]], dtype=torch.float64)
    assert M.proj_error(R, t_est, R, t_gt, K, flat).item() == pytest.approx(500 * 0.005 / 0.5)
    assert M.mspd(R, t_est, R, t_gt, K, flat).item() == pytest.approx(500 * 0.005 / 0.5)


def test_known_rotation_error():
    pts = torch.tensor([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]], dtype=torch.float64)
    R_gt = torch.eye(3, dtype=torch.float64)[None]
    R_est = _rot([0, 0, 1], 90)[None]
    t = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    # each point moves on a circle of radius 0.1 by 90 deg: distance 0.1 * sqrt(2)
    assert M.add(R_est, t, R_gt, t, pts).item() == pytest.approx(0.1 * math.sqrt(2))
    assert M.re(R_est, R_gt).item() == pytest.approx(90.0)


def test_symmetric_object_rotated_by_a_symmetry_has_zero_adds_and_mssd():
    # a box 2 x 1 x 1 symmetric under 180 deg about z
    pts = torch.from_numpy(np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.05, 0.05) for z in (-0.05, 0.05)]))
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0, 0, np.pi]).as_matrix()
    syms = M.symmetry_transforms([S])
    R_gt = _rot([1, 2, 3], 40)[None]
    t_gt = torch.tensor([[0.02, -0.01, 0.6]], dtype=torch.float64)
    R_est = R_gt @ torch.from_numpy(S[:3, :3])[None]
    assert M.add(R_est, t_gt, R_gt, t_gt, pts).item() > 0.05  # ADD sees the flip
    assert M.adi(R_est, t_gt, R_gt, t_gt, pts).item() == pytest.approx(0.0, abs=1e-12)
    assert M.mssd(R_est, t_gt, R_gt, t_gt, pts, syms).item() == pytest.approx(0.0, abs=1e-12)
    K = torch.tensor([[[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]], dtype=torch.float64)
    assert M.mspd(R_est, t_gt, R_gt, t_gt, K, pts, syms).item() == pytest.approx(0.0, abs=1e-9)
    assert M.mssd(R_est, t_gt, R_gt, t_gt, pts).item() > 0.05  # without the symmetry it is not zero


def test_continuous_symmetry_discretisation_like_bop():
    R, t_sym = M.symmetry_transforms((), [{"axis": [0, 0, 1], "offset": [0.0, 0.0, 0.0]}], max_sym_disc_step=0.01)
    assert len(R) == math.ceil(math.pi / 0.01)
    # a cylinder-like point set rotated by an arbitrary angle about its axis has near-zero MSSD
    ang = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    pts = torch.from_numpy(np.stack([0.05 * np.cos(ang), 0.05 * np.sin(ang), np.zeros_like(ang)], 1))
    R_gt = torch.eye(3, dtype=torch.float64)[None]
    t = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    R_est = _rot([0, 0, 1], 37.3)[None]
    e = M.mssd(R_est, t, R_gt, t, pts, (R, t_sym))
    assert e.item() < 0.01 * 0.1  # within the discretisation step of the diameter


def test_batched_against_numpy_reference():
    rng = np.random.default_rng(0)
    pts_np = rng.normal(size=(200, 3)) * 0.05
    B = 7
    R_gt = Rotation.random(B, random_state=1).as_matrix()
    R_est = (Rotation.from_matrix(R_gt) * Rotation.from_rotvec(rng.normal(size=(B, 3)) * 0.1)).as_matrix()
    t_gt = rng.normal(size=(B, 3)) * 0.05 + [0, 0, 0.7]
    t_est = t_gt + rng.normal(size=(B, 3)) * 0.01
    K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
    T = lambda R, t: pts_np @ R.T + t  # noqa: E731
    ref_add = [np.linalg.norm(T(R_est[i], t_est[i]) - T(R_gt[i], t_gt[i]), axis=1).mean() for i in range(B)]
    ref_adi = [cKDTree(T(R_est[i], t_est[i])).query(T(R_gt[i], t_gt[i]))[0].mean() for i in range(B)]

    def proj(X):
        x = X @ K.T
        return x[:, :2] / x[:, 2:]

    ref_proj = [np.linalg.norm(proj(T(R_est[i], t_est[i])) - proj(T(R_gt[i], t_gt[i])), axis=1).mean() for i in range(B)]
    ref_re = [np.rad2deg(Rotation.from_matrix(R_est[i] @ R_gt[i].T).magnitude()) for i in range(B)]
    to = torch.from_numpy
    Kb = to(np.repeat(K[None], B, 0))
    np.testing.assert_allclose(M.add(to(R_est), to(t_est), to(R_gt), to(t_gt), to(pts_np)).numpy(), ref_add, rtol=1e-10)
    np.testing.assert_allclose(M.adi(to(R_est), to(t_est), to(R_gt), to(t_gt), to(pts_np)).numpy(), ref_adi, rtol=1e-9)
    np.testing.assert_allclose(M.proj_error(to(R_est), to(t_est), to(R_gt), to(t_gt), Kb, to(pts_np)).numpy(), ref_proj,
                               rtol=1e-9)
    np.testing.assert_allclose(M.re(to(R_est), to(R_gt)).numpy(), ref_re, rtol=1e-7)


def test_bad_shapes():
    with pytest.raises(ValueError, match="pts"):
        M.add(torch.eye(3)[None], torch.zeros(1, 3), torch.eye(3)[None], torch.zeros(1, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="batch"):
        M.add(torch.eye(3)[None], torch.zeros(2, 3), torch.eye(3)[None], torch.zeros(1, 3), torch.zeros(5, 3))


def test_adi_searches_all_points_when_the_queries_are_a_subsample():
    """``query`` subsamples the averaged points only: each one's nearest neighbour is found among
    ALL model points (brute force reference), whatever ``R_est`` (a rotation, or not: then the
    estimate's points are searched directly, as bop_toolkit does); a non-finite pose gives inf."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    pts = rng.normal(size=(600, 3)) * 0.04
    q_idx = rng.choice(600, 50, replace=False)
    B = 5
    R_gt, R_est = Rotation.random(B, random_state=4).as_matrix(), Rotation.random(B, random_state=5).as_matrix()
    R_est[4] *= 1.1  # not a rotation
    t_gt = rng.normal(size=(B, 3)) * 0.02 + [0, 0, 0.6]
    t_est = t_gt + rng.normal(size=(B, 3)) * 0.01
    ref_all = [cdist(pts @ R_gt[b].T + t_gt[b], pts @ R_est[b].T + t_est[b]).min(1).mean() for b in range(B)]
    ref_sub = [cdist(pts[q_idx] @ R_gt[b].T + t_gt[b], pts @ R_est[b].T + t_est[b]).min(1).mean() for b in range(B)]
    to = torch.from_numpy
    args = (to(R_est), to(t_est), to(R_gt), to(t_gt), to(pts))
    np.testing.assert_allclose(M.adi(*args).numpy(), ref_all, rtol=1e-9)
    np.testing.assert_allclose(M.adi(*args, query=to(pts[q_idx])).numpy(), ref_sub, rtol=1e-9)
    t_nan = t_est.copy()
    t_nan[1] = np.nan
    e = M.adi(to(R_est), to(t_nan), to(R_gt), to(t_gt), to(pts))
    assert torch.isinf(e[1]) and torch.isfinite(e[[0, 2, 3, 4]]).all()
    assert M.adi(*(a[:0] for a in args[:4]), to(pts)).shape == (0,)
