"""The plain reference PnP solver against OpenCV, and the fast solver against the reference.

Independent references: OpenCV's ``solvePnP(SOLVEPNP_ITERATIVE)`` (and ``solvePnPRefineLM`` with tight
criteria, to reach the least-squares optimum that ITERATIVE's default stopping falls just short of),
the ground truth of noise-free problems, and point duplication in OpenCV for integer weights.
"""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import pose6d_ros.geometry.pnp_reference as pnp_reference
from pose6d_ros.geometry.pnp import solve_pnp
from pose6d_ros.geometry.pnp_reference import solve_pnp_reference

K_NP = np.array([[600.0, 0.0, 318.0], [0.0, 605.0, 244.0], [0.0, 0.0, 1.0]])
N_POINTS = 12
TIGHT = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 200, 1e-15)
# Agreement with OpenCV's tightly refined pose (radians; relative translation): its LM still stops
# a little short of the optimum (its reprojection RMS is never below the reference's).
ROT_TOL_LM, T_TOL_LM = 2e-6, 5e-7


def _problems(B: int, noise: float, seed: int):
    """``B`` random well-posed problems: 12 points scattered in a 10-20 cm box (not coplanar), at
    0.3-0.8 m (clear perspective), anywhere in the view, projected by OpenCV, plus Gaussian pixel
    noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-0.5, 0.5, (B, N_POINTS, 3)) * rng.uniform(0.1, 0.2, (B, 1, 3))
    R = Rotation.random(B, random_state=seed).as_matrix()
    z = rng.uniform(0.3, 0.8, B)
    t = np.concatenate([rng.uniform(-0.25, 0.25, (B, 2)) * z[:, None], z[:, None]], 1)
    uv = np.stack([cv2.projectPoints(X[b], cv2.Rodrigues(R[b])[0], t[b], K_NP, None)[0][:, 0] for b in range(B)])
    return X, R, t, uv + rng.normal(0.0, noise, uv.shape)


def _opencv(X, uv, refine: bool, K=K_NP):
    """OpenCV's ITERATIVE pose per problem, optionally refined by LM to tight tolerances."""
    Rs, ts = [], []
    for Xb, uvb in zip(X, uv):
        ok, rv, tv = cv2.solvePnP(Xb, uvb, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        if refine:
            rv, tv = cv2.solvePnPRefineLM(Xb, uvb, K, None, rv, tv, TIGHT)
        Rs.append(cv2.Rodrigues(rv)[0])
        ts.append(tv[:, 0])
    return np.array(Rs), np.array(ts)


def _rms(X, uv, R, t):
    """OpenCV's reprojection RMS (pixels) of poses ``R, t``."""
    return np.array([np.sqrt(np.mean(np.sum(
        (cv2.projectPoints(X[b], cv2.Rodrigues(R[b])[0], t[b], K_NP, None)[0][:, 0] - uv[b]) ** 2, 1)))
        for b in range(len(X))])


def _rotation_angle(Ra, Rb):
    """Angle (radians) between rotations, from ‖Ra − Rb‖_F = 2√2 sin(θ/2): exact near 0, where arccos
    of the trace loses half the digits."""
    return 2 * np.arcsin(np.clip(np.linalg.norm(np.asarray(Ra) - np.asarray(Rb), axis=(1, 2)) / np.sqrt(8), 0, 1))


def _in_front(X, R, t):
    """``(B,)``: every point in front of the camera at pose ``R, t``."""
    return ((np.einsum("bij,bnj->bni", R, X) + t[:, None])[..., 2] > 0).all(1)


def _relative_translation(ta, tb):
    return np.linalg.norm(np.asarray(ta) - np.asarray(tb), axis=1) / np.linalg.norm(tb, axis=1)


def _to_normalised_camera(X, R, t):
    """``(B, N, 3)``: ``(x/z, y/z, 1)`` of the camera-frame points at pose ``R, t``."""
    Xc = np.einsum("bij,bnj->bni", R, X) + t[:, None]
    return Xc / Xc[..., 2:]


def _torch(*arrays, dtype=torch.float64):
    return [torch.as_tensor(np.array(a), dtype=dtype) for a in arrays]


def _solve(solver, X, uv, dtype=torch.float64, **kwargs):
    x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (len(X), 3, 3)), dtype=dtype)
    res = solver(x2, X3, K, **kwargs)
    return res, res.R.double().numpy(), res.t.double().numpy()


class TestReferenceAgainstOpenCV:
    @pytest.mark.parametrize("noise", [0.5, 1.0])
    def test_matches_opencv_iterative(self, noise):
        # ITERATIVE is DLT + LM on the same least-squares cost. Its default stopping leaves it
        # ~1e-5 rad short of the optimum, so its pose is compared loosely, and the same pose
        # refined by solvePnPRefineLM (tight criteria) tightly; no OpenCV reprojection RMS is
        # below the reference's. OpenCV does not enforce cheirality: on a few problems it returns
        # a mirror pose behind the camera (no valid answer); those are left out, and counted.
        X, _, _, uv = _problems(200, noise, seed=1)
        res, R, t = _solve(solve_pnp_reference, X, uv)
        assert not res.failed.any()
        R_cv, t_cv = _opencv(X, uv, refine=False)
        R_lm, t_lm = _opencv(X, uv, refine=True)
        front = _in_front(X, R_cv, t_cv) & _in_front(X, R_lm, t_lm)
        assert front.sum() >= 195
        assert _rotation_angle(R, R_cv)[front].max() < 1e-4
        assert _relative_translation(t, t_cv)[front].max() < 2e-5
        assert _rotation_angle(R, R_lm)[front].max() < ROT_TOL_LM
        assert _relative_translation(t, t_lm)[front].max() < T_TOL_LM
        rms_ref = res.reprojection_error.numpy()
        np.testing.assert_allclose(rms_ref, _rms(X, uv, R, t), rtol=1e-9)  # its RMS is OpenCV's projection's
        assert (rms_ref <= _rms(X, uv, R_cv, t_cv) + 1e-12)[front].all()
        rms_lm = _rms(X, uv, R_lm, t_lm)
        assert (rms_ref <= rms_lm + 1e-12)[front].all() and (rms_lm - rms_ref)[front].max() < 1e-9

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    def test_noise_free_recovers_truth(self, dtype):
        X, R_true, t_true, uv = _problems(200, 0.0, seed=2)
        res, R, t = _solve(solve_pnp_reference, X, uv, dtype=dtype)
        assert not res.failed.any() and res.R.dtype == dtype
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        assert _rotation_angle(R, R_true).max() < tol
        assert _relative_translation(t, t_true).max() < tol
        assert res.reprojection_error.max() < (1e-8 if dtype == torch.float64 else 1e-2)

    def test_integer_weights_are_repeated_points(self):
        # Weighted least squares with weight k on a point is least squares with the point
        # given k times: OpenCV, fed the repeated points, is the reference (weight 0: dropped).
        X, _, _, uv = _problems(20, 1.0, seed=3)
        w = np.random.default_rng(3).integers(0, 4, (20, N_POINTS))
        w[:, :6] = np.maximum(w[:, :6], 1)  # at least 6 points with positive weight
        uv = uv.copy()
        uv[w == 0] += 200.0  # gross outliers, harmless at weight 0
        res, R, t = _solve(solve_pnp_reference, X, uv, weights=torch.as_tensor(w, dtype=torch.float64))
        assert not res.failed.any()
        X_rep = [np.repeat(X[b], w[b], 0) for b in range(20)]
        uv_rep = [np.repeat(uv[b], w[b], 0) for b in range(20)]
        R_lm, t_lm = _opencv(X_rep, uv_rep, refine=True)
        assert _in_front(X, R_lm, t_lm).all()
        assert _rotation_angle(R, R_lm).max() < ROT_TOL_LM
        assert _relative_translation(t, t_lm).max() < T_TOL_LM

    def test_skewed_intrinsics(self):
        # The reference honours K's skew (the fast solver assumes none): projected by hand with
        # u = fx x/z + s y/z + cx, noise-free, it must give back the true pose.
        X, R_true, t_true, _ = _problems(20, 0.0, seed=4)
        K = K_NP.copy()
        K[0, 1] = 40.0
        Xc = np.einsum("bij,bnj->bni", R_true, X) + t_true[:, None]
        uv = np.einsum("ij,bnj->bni", K[:2], Xc / Xc[..., 2:])
        res = solve_pnp_reference(*_torch(uv, X, np.broadcast_to(K, (20, 3, 3))))
        assert not res.failed.any()
        assert _rotation_angle(res.R.numpy(), R_true).max() < 1e-9
        assert _relative_translation(res.t.numpy(), t_true).max() < 1e-9


class TestFastAgainstReference:
    @pytest.mark.parametrize("noise", [0.0, 1.0])
    def test_same_least_squares_optimum(self, noise):
        # Both solvers stop by their own tolerances; both must sit at the least-squares optimum.
        X, R_true, t_true, uv = _problems(200, noise, seed=5)
        ref, R_ref, t_ref = _solve(solve_pnp_reference, X, uv)
        fast, R_fast, t_fast = _solve(solve_pnp, X, uv, huber_delta=None)
        assert not ref.failed.any() and not fast.failed.any()
        assert _rotation_angle(R_fast, R_ref).max() < 1e-6
        assert _relative_translation(t_fast, t_ref).max() < 1e-7
        torch.testing.assert_close(fast.reprojection_error, ref.reprojection_error, rtol=1e-9, atol=1e-9)
        if noise == 0.0:  # and there the optimum is the truth
            assert _rotation_angle(R_ref, R_true).max() < 1e-9

    def test_default_huber_inactive_is_least_squares(self):
        # At 1 px noise Huber's 5 px threshold is met by every residual of most problems; for
        # those, the fast solver's default (robust) objective has the same optimum.
        X, _, _, uv = _problems(200, 1.0, seed=6)
        ref, R_ref, t_ref = _solve(solve_pnp_reference, X, uv)
        fast, R_fast, t_fast = _solve(solve_pnp, X, uv)  # huber_delta=5.0
        residual = np.linalg.norm(
            np.einsum("ij,bnj->bni", K_NP[:2], _to_normalised_camera(X, R_ref, t_ref)) - uv, axis=2)
        inlier_only = residual.max(1) < 5.0
        assert inlier_only.sum() > 150
        assert _rotation_angle(R_fast, R_ref)[inlier_only].max() < 1e-6
        assert _relative_translation(t_fast, t_ref)[inlier_only].max() < 1e-7

    def test_float32(self):
        X, _, _, uv = _problems(200, 1.0, seed=7)
        _, R64, t64 = _solve(solve_pnp_reference, X, uv)
        ref, R_ref, t_ref = _solve(solve_pnp_reference, X, uv, dtype=torch.float32)
        fast, R_fast, t_fast = _solve(solve_pnp, X, uv, dtype=torch.float32, huber_delta=None)
        assert not ref.failed.any() and not fast.failed.any()
        for R, t in ((R_ref, t_ref), (R_fast, t_fast)):  # both near float32's rounding floor
            assert _rotation_angle(R, R64).max() < 1e-4
            assert _relative_translation(t, t64).max() < 1e-4


class TestFailures:
    def test_degenerate_inputs_flagged_and_isolated(self):
        X, _, _, uv = _problems(8, 1.0, seed=8)
        X, uv = X.copy(), uv.copy()
        w = np.ones((8, N_POINTS))
        X[1] = np.linspace(0, 1, N_POINTS)[:, None] * np.array([0.1, 0.05, 0.02])  # collinear 3D
        X[2, :, 2] = 0.0  # coplanar 3D
        uv[3] = np.linspace(0, 1, N_POINTS)[:, None] * np.array([100.0, 50.0]) + 200  # collinear 2D
        uv[4, 0, 1] = np.inf
        X[5, 3, 0] = np.nan
        w[6, :7] = 0.0  # 5 points left
        K = np.broadcast_to(K_NP, (8, 3, 3)).copy()
        K[7, 0, 0] = -600.0
        x2, X3, Kt, wt = _torch(uv, X, K, w)
        res = solve_pnp_reference(x2, X3, Kt, wt)
        assert res.failed.tolist() == [False] + [True] * 7
        torch.testing.assert_close(res.R[1:], torch.eye(3, dtype=torch.float64).expand(7, 3, 3))
        torch.testing.assert_close(res.t[1:], torch.tensor([[0.0, 0, 1]], dtype=torch.float64).expand(7, 3))
        assert torch.isinf(res.reprojection_error[1:]).all()
        R_lm, t_lm = _opencv(X[:1], uv[:1], refine=True)  # the good problem is untouched
        assert _rotation_angle(res.R[:1].numpy(), R_lm).max() < ROT_TOL_LM
        assert _relative_translation(res.t[:1].numpy(), t_lm).max() < T_TOL_LM


def test_docstring_example():
    # The example recovers the pose it projected (t = (0.01, 0.02, 0.5)).
    result = doctest.testmod(pnp_reference, verbose=False)
    assert result.attempted >= 5 and result.failed == 0
