from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from pose6d_ros.geometry.pnp import PnPLayer, solve_pnp
from pose6d_ros.geometry.pnp_reference import solve_pnp_reference

K_NP = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])


def _problems(B: int, noise: float, seed: int = 0):
    """Box corners + centre of 10-20 cm boxes at 0.3-1.5 m, projected with OpenCV (independent)."""
    rng = np.random.default_rng(seed)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    ext = rng.uniform(0.1, 0.2, (B, 1, 3))
    X = np.concatenate([signs[None] * ext / 2, np.zeros((B, 1, 3))], 1) + rng.uniform(-0.02, 0.02, (B, 1, 3))
    R = Rotation.random(B, random_state=seed).as_matrix()
    z = rng.uniform(0.3, 1.5, B)
    t = np.concatenate([rng.uniform(-0.3, 0.3, (B, 2)) * z[:, None], z[:, None]], 1)
    uv = np.stack([cv2.projectPoints(X[b], cv2.Rodrigues(R[b])[0], t[b], K_NP, None)[0][:, 0]
                   for b in range(B)])
    return X, R, t, uv + rng.normal(0.0, noise, uv.shape)


def _errors(R_est, t_est, R, t):
    cos = (np.trace(np.einsum("bij,bkj->bik", R_est, R), axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1))), np.linalg.norm(t_est - t, axis=1)


def _torch(*arrays, dtype=torch.float64, device="cpu"):
    return [torch.as_tensor(np.array(a), dtype=dtype, device=device) for a in arrays]


class TestAccuracy:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    def test_no_worse_than_opencv_iterative(self, dtype):
        B = 1000
        X, R, t, uv = _problems(B, 1.0)
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (B, 3, 3)), dtype=dtype)
        res = solve_pnp(x2, X3, K)  # default settings: early exit at the dtype's tolerance
        assert not res.failed.any()
        ours = _errors(res.R.double().numpy(), res.t.double().numpy(), R, t)
        Rs, ts = [], []
        for b in range(B):
            _, rv, tv = cv2.solvePnP(X[b], uv[b], K_NP, None, flags=cv2.SOLVEPNP_ITERATIVE)
            Rs.append(cv2.Rodrigues(rv)[0])
            ts.append(tv[:, 0])
        ref = _errors(np.array(Rs), np.array(ts), R, t)
        for o, r in zip(ours, ref):
            for q in (50, 95):
                assert np.percentile(o, q) <= 1.01 * np.percentile(r, q)

    def test_noise_free_exact(self, device, dtype):
        B = 200
        X, R, t, uv = _problems(B, 0.0, seed=1)
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (B, 3, 3)), dtype=dtype, device=device)
        res = solve_pnp(x2, X3, K)
        assert not res.failed.any()
        tol = 1e-6 if dtype == torch.float64 else 1e-3
        R_err = np.linalg.norm(res.R.double().cpu().numpy() - R, axis=(1, 2))
        t_rel = np.linalg.norm(res.t.double().cpu().numpy() - t, axis=1) / np.linalg.norm(t, axis=1)
        assert R_err.max() < tol and t_rel.max() < tol
        assert res.R.dtype == dtype and res.R.device.type == device.type

    def test_default_tol_reaches_least_squares_optimum(self, dtype):
        # The early exit must not stop short: with noise the DLT start is not exact, and the
        # default tolerance has to carry the pose to the least-squares optimum, found here
        # independently by scipy's Levenberg-Marquardt (tight tolerances, cv2's projection, from
        # cv2's ITERATIVE pose). float32's own rounding floor is ~1e-6.
        B = 200
        X, R, t, uv = _problems(B, 1.0, seed=14)
        Rs, ts = [], []
        for b in range(B):
            _, rv, tv = cv2.solvePnP(X[b], uv[b], K_NP, None, flags=cv2.SOLVEPNP_ITERATIVE)
            res_b = least_squares(
                lambda p: (cv2.projectPoints(X[b], p[:3], p[3:], K_NP, None)[0][:, 0] - uv[b]).ravel(),
                np.concatenate([rv[:, 0], tv[:, 0]]), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
            Rs.append(cv2.Rodrigues(res_b.x[:3])[0])
            ts.append(res_b.x[3:])
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (B, 3, 3)), dtype=dtype)
        res = solve_pnp(x2, X3, K, huber_delta=None)  # the least-squares objective, as scipy's
        tol = 1e-6 if dtype == torch.float64 else 1e-5
        R_err = np.linalg.norm(res.R.double().numpy() - np.array(Rs), axis=(1, 2))
        t_rel = np.linalg.norm(res.t.double().numpy() - np.array(ts), axis=1) / np.linalg.norm(ts, axis=1)
        assert R_err.max() < tol and t_rel.max() < tol

    def test_shared_points_and_weights(self):
        B = 8
        X, R, t, uv = _problems(B, 0.0, seed=2)
        X = np.broadcast_to(X[0], X.shape)
        uv = np.stack([cv2.projectPoints(X[b], cv2.Rodrigues(R[b])[0], t[b], K_NP, None)[0][:, 0]
                       for b in range(B)])
        uv[:, 3] += 40.0  # one gross outlier per problem, switched off by its weight
        w = np.ones((B, 9))
        w[:, 3] = 0.0
        x2, X3, K, W = _torch(uv, X[0], np.broadcast_to(K_NP, (B, 3, 3)), w)
        res = solve_pnp(x2, X3, K, W)
        np.testing.assert_allclose(res.t.numpy(), t, atol=1e-8)

    def test_huber_resists_outlier(self):
        B = 50
        X, R, t, uv = _problems(B, 0.5, seed=3)
        uv[:, 0] += 60.0
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (B, 3, 3)))
        robust = _errors(*(a.numpy() for a in (lambda r: (r.R, r.t))(solve_pnp(x2, X3, K, huber_delta=2.0))), R, t)
        plain = _errors(*(a.numpy() for a in (lambda r: (r.R, r.t))(solve_pnp(x2, X3, K, huber_delta=None))), R, t)
        assert np.median(robust[1]) < 0.5 * np.median(plain[1])


class TestGradients:
    def _setup(self, B=3, noise=1.0, seed=4):
        X, R, t, uv = _problems(B, noise, seed)
        return _torch(uv, X, np.broadcast_to(K_NP, (B, 3, 3)).copy())

    def test_gradcheck_points_2d(self):
        x2, X3, K = self._setup(B=2)
        x2.requires_grad_()
        fn = lambda a: (lambda r: (r.R, r.t))(solve_pnp(a, X3, K, iterations=30, tol=0))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x2,), eps=1e-6, atol=1e-6, rtol=1e-4)

    def test_gradcheck_all_inputs_huber_active(self):
        x2, X3, K = self._setup(B=1, noise=4.0, seed=5)
        w = torch.rand(1, 9, dtype=torch.float64) + 0.5
        args = [a.clone().requires_grad_() for a in (x2, X3, K, w)]
        fn = lambda a, b, c, d: (lambda r: (r.R, r.t))(  # noqa: E731
            solve_pnp(a, b, c, d, iterations=60, tol=0, huber_delta=3.0))
        # fast_mode: random projections of the Jacobian, to keep the test within a few seconds.
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)

    def test_gradcheck_points_2d_huber_active(self):
        # Only the 2D points require grad: the closed-form backward, with points in Huber's
        # linear zone (4 px noise, 3 px threshold) and fixed per-point weights.
        x2, X3, K = self._setup(B=1, noise=4.0, seed=9)
        w = torch.rand(1, 9, dtype=torch.float64) + 0.5
        x2.requires_grad_()
        fn = lambda a: (lambda r: (r.R, r.t))(  # noqa: E731
            solve_pnp(a, X3, K, w, iterations=60, tol=0, huber_delta=3.0))
        # the premise: at the optimum some residual is beyond the 3 px threshold (OpenCV's projection)
        R, t = (v.detach().numpy()[0] for v in fn(x2))
        proj, _ = cv2.projectPoints(X3[0].numpy(), cv2.Rodrigues(R)[0], t, K[0].numpy(), None)
        assert (np.linalg.norm(proj[:, 0] - x2[0].detach().numpy(), axis=1) > 3.0).any()
        assert torch.autograd.gradcheck(fn, (x2,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)

    @pytest.mark.parametrize("B", [2, 200], ids=["state", "inputs"])
    def test_gradcheck_points_2d_both_backward_paths(self, B):
        # Small batches take the 2D gradient from the solver's state, large ones from the inputs.
        from pose6d_ros.geometry import pnp

        assert (B * 9 > pnp._STATE_GRAD_MAX_POINTS) == (B == 200)
        x2, X3, K = self._setup(B=B, seed=12)
        x2[:, 0] += 8.0  # a point in Huber's linear zone
        x2.requires_grad_()
        fn = lambda a: (lambda r: (r.R, r.t))(solve_pnp(a, X3, K, iterations=30, tol=0))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x2,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)

    def test_inference_mode_then_autograd(self):
        # Cached constants created under inference mode must not break a later autograd call.
        from pose6d_ros.geometry import pnp

        x2, X3, K = self._setup(B=2, seed=10)
        pnp._constants.cache_clear()  # so the constants below are created under inference mode
        with torch.inference_mode():
            ref = solve_pnp(x2, X3, K)
        x = x2.clone().requires_grad_()
        res = solve_pnp(x, X3, K)
        (res.R.sum() + res.t.sum()).backward()
        assert torch.isfinite(x.grad).all() and (x.grad != 0).any()
        torch.testing.assert_close(res.t.detach(), ref.t)

    def test_no_grad_outputs_enter_autograd(self):
        # The no-grad path solves in inference mode; its outputs must still be normal tensors.
        x2, X3, K = self._setup(B=2, seed=11)
        res = solve_pnp(x2, X3, K)
        assert not any(v.is_inference() for v in (res.R, res.t, res.failed, res.reprojection_error))
        s = torch.ones(3, dtype=x2.dtype, requires_grad=True)
        (res.R @ s).sum().add(res.t.mul(s).sum()).backward()
        torch.testing.assert_close(s.grad, (res.R.sum((0, 1)) + res.t.sum(0)))

    def test_failed_problem_isolated(self):
        x2, X3, K = self._setup(B=3)
        bad = x2.clone()
        bad[1, 3, 0] = float("nan")
        bad.requires_grad_()
        res = solve_pnp(bad, X3, K)
        assert res.failed.tolist() == [False, True, False]
        assert torch.isfinite(res.R).all() and torch.isfinite(res.t).all()
        (res.R.sum() + res.t.sum()).backward()
        assert torch.isfinite(bad.grad).all() and (bad.grad[1] == 0).all()
        good = x2[[0, 2]].clone().requires_grad_()
        ref = solve_pnp(good, X3[[0, 2]], K[[0, 2]])
        (ref.R.sum() + ref.t.sum()).backward()
        torch.testing.assert_close(bad.grad[[0, 2]], good.grad)


class TestFailures:
    def test_degenerate_inputs_flagged(self, device, dtype):
        X, R, t, uv = _problems(5, 0.0, seed=6)
        X, uv = X.copy(), uv.copy()
        X[1] = np.linspace(0, 1, 9)[:, None] * np.array([0.1, 0.05, 0.02])  # collinear 3D
        X[2, :, 2] = 0.0  # coplanar 3D (unsupported by the DLT initialisation)
        uv[3] = np.linspace(0, 1, 9)[:, None] * np.array([100.0, 50.0]) + 200  # collinear 2D
        uv[4, 0, 1] = np.inf
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (5, 3, 3)), dtype=dtype, device=device)
        res = solve_pnp(x2, X3, K)
        assert res.failed.tolist() == [False, True, True, True, True]
        assert torch.isfinite(res.R).all() and torch.isfinite(res.t).all()
        torch.testing.assert_close(res.t[1:].cpu(), torch.tensor([[0.0, 0, 1]], dtype=dtype).expand(4, 3))

    @pytest.mark.parametrize("kind", ["collinear_3d", "coplanar_3d", "collinear_2d"])
    def test_flat_problem_does_not_hold_the_batch(self, kind, device, dtype):
        # One flat problem must be flagged and leave the rest of its batch as if solved alone:
        # the same steps run (it must not keep the batch iterating), the same poses (OpenCV's
        # least-squares pose, refined, as the independent reference) and the same gradients.
        X, R, t, uv = _problems(4, 1.0, seed=15)
        X, uv = X.copy(), uv.copy()
        if kind == "collinear_3d":
            X[1] = np.linspace(0, 1, 9)[:, None] * np.array([0.1, 0.05, 0.02])
        elif kind == "coplanar_3d":
            X[1, :, 2] = 0.0
        else:
            uv[1] = np.linspace(0, 1, 9)[:, None] * np.array([100.0, 50.0]) + 200
        x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (4, 3, 3)), dtype=dtype, device=device)
        x2.requires_grad_()
        res = solve_pnp(x2, X3, K, huber_delta=None)
        (res.R.sum() + res.t.sum()).backward()
        good = [0, 2, 3]
        x2_alone = x2.detach()[good].clone().requires_grad_()
        alone = solve_pnp(x2_alone, X3[good], K[good], huber_delta=None)
        (alone.R.sum() + alone.t.sum()).backward()

        assert res.failed.tolist() == [False, True, False, False]
        assert torch.isfinite(res.R).all() and torch.isfinite(res.t).all()
        torch.testing.assert_close(res.t[1].cpu(), torch.tensor([0.0, 0, 1], dtype=dtype))
        assert res.iterations == alone.iterations
        torch.testing.assert_close(res.R[good], alone.R)
        torch.testing.assert_close(res.t[good], alone.t)
        assert torch.isfinite(x2.grad).all() and (x2.grad[1] == 0).all()
        torch.testing.assert_close(x2.grad[good], x2_alone.grad)
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-14)
        tol = 1e-5 if dtype == torch.float64 else 1e-4
        for b in good:
            _, rv, tv = cv2.solvePnP(X[b], uv[b], K_NP, None, flags=cv2.SOLVEPNP_ITERATIVE)
            rv, tv = cv2.solvePnPRefineLM(X[b], uv[b], K_NP, None, rv, tv, crit)
            np.testing.assert_allclose(res.R[b].detach().double().cpu().numpy(), cv2.Rodrigues(rv)[0], atol=tol)
            np.testing.assert_allclose(res.t[b].detach().double().cpu().numpy(), tv[:, 0], rtol=tol)

    def test_points_behind_camera(self):
        X, R, t, _ = _problems(4, 0.0, seed=7)
        t = t * np.array([1.0, 1.0, -1.0])  # object behind the camera, z in [-1.5, -0.3]
        t[:, 2] = np.array([-0.3, -0.4, -0.5, -0.35])
        Xc = np.einsum("bij,bnj->bni", R, X) + t[:, None]
        uv = Xc[..., :2] / Xc[..., 2:3] * np.diag(K_NP)[:2] + K_NP[:2, 2]
        res = solve_pnp(*_torch(uv, X, np.broadcast_to(K_NP, (4, 3, 3))))
        assert res.failed.all()
        assert torch.isfinite(res.R).all() and torch.isfinite(res.t).all()

    @pytest.mark.parametrize("solver", [solve_pnp, solve_pnp_reference], ids=["fast", "reference"])
    def test_empty_batch(self, solver):
        res = solver(torch.zeros(0, 9, 2), torch.rand(9, 3), torch.eye(3).expand(0, 3, 3))
        assert res.R.shape == (0, 3, 3) and res.t.shape == (0, 3) and res.failed.shape == (0,)

    @pytest.mark.parametrize("solver", [solve_pnp, solve_pnp_reference], ids=["fast", "reference"])
    def test_exceptions(self, solver):
        with pytest.raises(ValueError, match="N >= 6"):
            solver(torch.zeros(1, 4, 2), torch.zeros(4, 3), torch.eye(3)[None])
        with pytest.raises(ValueError, match="points_3d"):
            solver(torch.zeros(1, 9, 2), torch.zeros(8, 3), torch.eye(3)[None])
        with pytest.raises(ValueError, match="K"):
            solver(torch.zeros(2, 9, 2), torch.zeros(9, 3), torch.eye(3)[None])
        with pytest.raises(ValueError, match="weights"):
            solver(torch.zeros(1, 9, 2), torch.zeros(9, 3), torch.eye(3)[None], torch.ones(1, 8))
        with pytest.raises(TypeError, match="dtypes differ"):
            solver(torch.zeros(1, 9, 2), torch.zeros(9, 3, dtype=torch.float64), torch.eye(3)[None])


def test_layer_matches_function():
    X, R, t, uv = _problems(4, 1.0, seed=8)
    x2, X3, K = _torch(uv, X, np.broadcast_to(K_NP, (4, 3, 3)))
    torch.testing.assert_close(PnPLayer(huber_delta=None)(x2, X3, K).t,
                               solve_pnp(x2, X3, K, huber_delta=None).t)
