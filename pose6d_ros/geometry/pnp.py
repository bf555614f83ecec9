"""Batched, differentiable Perspective-n-Point in torch (CPU and CUDA, float32 and float64).

Forward: a closed-form DLT initialisation on normalised data, then Levenberg–Marquardt on SE(3)
with Huber IRLS weights, every problem of the batch at once (fixed small iteration count,
analytic Jacobians, batched 6x6 solves). Backward: the implicit function theorem at the optimum
(as BPnP, Chen et al. 2020): with ``g(θ, x) = ∂f/∂θ = 0`` at the solution,
``dθ/dx = -H⁻¹ ∂g/∂x`` where ``H`` is the exact Hessian of the robust reprojection objective ``f``.
This is the ``P(h, K_crop) → y`` block of ``docs`` / ``/work/shared/notes/method.md``.

Conventions: ``x_cam = R @ x_model + t``; pixels in the OpenCV convention (``docs/conventions.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from pose6d_ros._checks import check_shape, check_same_batch

# Relative eigenvalue ratio below which a point set is called flat (coplanar 3D / collinear 2D).
_DEGENERATE_RATIO = 1e-7


@dataclass(frozen=True)
class PnPResult:
    """Output of :func:`solve_pnp`.

    Attributes:
        R: ``(B, 3, 3)`` rotations model -> camera (identity for failed problems).
        t: ``(B, 3)`` translations, units of ``points_3d`` (``(0, 0, 1)`` for failed problems).
        failed: ``(B,)`` bool; see :func:`solve_pnp` for the causes.
        reprojection_error: ``(B,)`` RMS over points of the 2D reprojection error, pixels.
        iterations: number of LM iterations run (the same for the whole batch).
    """

    R: Tensor
    t: Tensor
    failed: Tensor
    reprojection_error: Tensor
    iterations: int


def solve_pnp(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Optional[Tensor] = None,
              iterations: int = 10, huber_delta: Optional[float] = 5.0,
              tol: Optional[float] = None) -> PnPResult:
    """Solve a batch of PnP problems; differentiable by the implicit function theorem.

    Minimises ``f = Σ_i w_i ρ(‖π(R X_i + t) − u_i‖)`` (pixels) over SE(3), with ``ρ`` Huber of
    threshold ``huber_delta`` (plain least squares when ``None``). Gradients flow to
    ``points_2d``, ``points_3d``, ``K`` and ``weights`` (whichever require grad), exact at the
    optimum; failed problems get zero gradient and never affect other problems.

    A problem is flagged ``failed`` (and returns ``R = I``, ``t = (0, 0, 1)``) when its inputs
    are not finite, fewer than 6 points have positive weight, the 3D points are coplanar or
    collinear (unsupported by the DLT initialisation), the 2D points are collinear, the DLT finds
    the object behind the camera (no proper rotation fits), any point lies at ``z <= 0`` at the
    solution, or the solution is not finite.

    Args:
        points_2d: ``(B, N, 2)`` observed pixels (undistorted: see ``camera.undistort_points``).
        points_3d: ``(B, N, 3)`` or ``(N, 3)`` model points, ``N >= 6``.
        K: ``(B, 3, 3)`` intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        weights: optional ``(B, N)`` non-negative per-point weights (confidences).
        iterations: maximum LM iterations.
        huber_delta: Huber threshold in pixels, or ``None`` for least squares.
        tol: stop early once every problem's step is below ``tol`` (``None``: a dtype default,
            ``1e-10`` for float64 and ``1e-5`` for float32; ``0`` runs all iterations).

    Returns:
        :class:`PnPResult`.

    Example:
        >>> K = torch.tensor([[[500., 0, 320], [0, 500, 240], [0, 0, 1]]])
        >>> X = torch.tensor([[x, y, z] for x in (-.05, .05) for y in (-.05, .05) for z in (-.05, .05)])
        >>> from pose6d_ros.geometry.keypoints import project_points
        >>> uv = project_points(X, torch.eye(3)[None], torch.tensor([[0.01, 0.02, 0.5]]), K)
        >>> solve_pnp(uv, X, K).t.round(decimals=4)
        tensor([[0.0100, 0.0200, 0.5000]])
    """
    check_shape(points_2d, ("B", "N", 2), "points_2d")
    B, N = points_2d.shape[:2]
    if points_3d.dim() == 2:
        check_shape(points_3d, (N, 3), "points_3d")
        points_3d = points_3d.unsqueeze(0).expand(B, N, 3)
    check_shape(points_3d, ("B", N, 3), "points_3d")
    check_shape(K, ("B", 3, 3), "K")
    check_same_batch(("points_2d", points_2d), ("points_3d", points_3d), ("K", K))
    if weights is not None:
        check_shape(weights, ("B", N), "weights")
        check_same_batch(("points_2d", points_2d), ("weights", weights))
    if N < 6:
        raise ValueError(f"points_2d: the DLT initialisation needs N >= 6 points, got N={N}")
    if not (points_2d.dtype == points_3d.dtype == K.dtype):
        raise TypeError(f"points_2d/points_3d/K: dtypes differ "
                        f"({points_2d.dtype}, {points_3d.dtype}, {K.dtype})")
    if tol is None:
        tol = 1e-10 if points_2d.dtype == torch.float64 else 1e-5
    w = weights if weights is not None else points_2d.new_ones(B, N)
    tensors = (points_2d, points_3d, K, w)
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        R, t, failed, err, iters = _PnPFunction.apply(*tensors, iterations, huber_delta, tol)
        return PnPResult(R, t, failed, err, int(iters))
    with torch.no_grad():
        R, t, failed, err, iters = _solve(*tensors, iterations, huber_delta, tol)
    return PnPResult(R, t, failed, err, iters)


# ----------------------------------------------------------------------------------------------
# Forward solver (no autograd)


def _skew(w: Tensor) -> Tensor:
    """``(B, 3)`` -> ``(B, 3, 3)`` cross-product matrix."""
    z = torch.zeros_like(w[:, 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack((z, -wz, wy, wz, z, -wx, -wy, wx, z), -1).view(-1, 3, 3)


def _so3_exp(w: Tensor) -> Tensor:
    """Rodrigues' formula, ``(B, 3)`` -> ``(B, 3, 3)``, with Taylor terms near zero."""
    th2 = (w * w).sum(-1, keepdim=True).unsqueeze(-1)
    small = th2 < 1e-8
    th2s = torch.where(small, torch.ones_like(th2), th2)
    th = th2s.sqrt()
    a = torch.where(small, 1 - th2 / 6, th.sin() / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - th.cos()) / th2s)
    S = _skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a * S + b * (S @ S)


def _flatness(centred: Tensor, w: Tensor) -> Tensor:
    """Smallest / mean eigenvalue proxy ``det(C) / (tr(C)/d)^d`` of a weighted covariance."""
    C = (centred * w[..., None]).transpose(1, 2) @ centred
    d = C.shape[-1]
    tr = C.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    return torch.linalg.det(C) / tr.clamp_min(torch.finfo(C.dtype).tiny) ** d


def _orthonormalise(M: Tensor) -> Tensor:
    """Rotation close to ``M``'s rows: symmetric orthonormalisation of rows 1-2, row 3 = r1 x r2.

    Not the polar factor, but within a few degrees of it for a DLT estimate, which is all the
    LM refinement needs; it avoids a batched SVD (the most expensive step otherwise).
    """
    a = torch.nn.functional.normalize(M[:, 0], dim=-1)
    b = torch.nn.functional.normalize(M[:, 1], dim=-1)
    c = torch.nn.functional.normalize(a + b, dim=-1)
    d = torch.nn.functional.normalize(a - b, dim=-1)
    r1 = (c + d) * math.sqrt(0.5)
    r2 = (c - d) * math.sqrt(0.5)
    return torch.stack((r1, r2, torch.linalg.cross(r1, r2)), 1)


def _dlt(xn: Tensor, X: Tensor, w: Tensor, fxy: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted DLT with ``t_z = 1`` normalisation, in a virtual camera facing the points.

    ``X`` is centred, so ``t_z`` is the depth of the model centre, > 0 for an object in front of
    the camera. The camera is first rotated (``R_v``) so that the mean viewing ray is its
    optical axis: the image points are then centred (Hartley's normalisation, done by a rotation
    so that the DLT form is kept), which stops the poorly observed perspective row ``m3`` from
    leaking into ``m1, m2`` for small, far objects. ``r3 = r1 x r2``.

    Returns ``R (B,3,3)``, ``t (B,3)``, ``reversed (B,)`` (``m3`` opposite to ``m1 x m2``: the
    projective fit sees the points from behind) and ``sq_err (B,)``, the projective camera's
    squared reprojection error in pixels (summed over weighted points), the unconstrained
    reference the constrained optimum is tested against.
    """
    B, N = X.shape[:2]
    wn = w / w.sum(1, keepdim=True)
    ray = torch.cat(((wn[..., None] * xn).sum(1), torch.ones_like(wn[:, :1])), -1)
    a = torch.nn.functional.normalize(ray, dim=-1)
    # Rotation taking a to e_z: I + [v]x + [v]x^2 / (1 + c), v = a x e_z, c = a_z > 0.
    v = torch.stack((a[:, 1], -a[:, 0], torch.zeros_like(a[:, 0])), -1)
    S = _skew(v)
    Rv = torch.eye(3, dtype=X.dtype, device=X.device) + S + (S @ S) / (1 + a[:, 2:3, None])
    bear = torch.cat((xn, torch.ones_like(xn[..., :1])), -1) @ Rv.transpose(1, 2)
    xv = bear[..., :2] / bear[..., 2:3]
    x, y = xv[..., 0:1], xv[..., 1:2]
    one = torch.ones_like(x)
    zero4 = torch.zeros_like(X[..., :1]).expand(B, N, 4)
    Xh = torch.cat((X, one), -1)
    row_u = torch.cat((Xh, zero4, -x * X), -1)
    row_v = torch.cat((zero4, Xh, -y * X), -1)
    A = torch.stack((row_u, row_v), 2).view(B, 2 * N, 11)
    rhs = xv.reshape(B, 2 * N, 1)
    Aw = A * w.repeat_interleave(2, dim=1)[..., None]
    AtA = Aw.transpose(1, 2) @ A
    Atb = Aw.transpose(1, 2) @ rhs
    p, _ = torch.linalg.solve_ex(AtA, Atb)
    p = p[..., 0]
    M = torch.stack((p[:, 0:3], p[:, 4:7], p[:, 8:11]), 1)
    scale = M[:, :2].norm(dim=-1).mean(-1, keepdim=True)
    t = torch.stack((p[:, 3], p[:, 7], torch.ones_like(p[:, 0])), -1) / scale
    R = _orthonormalise(M)
    reversed_ = (M[:, 2] * R[:, 2]).sum(-1) < 0
    Rvt = Rv.transpose(1, 2)
    P = torch.cat((M, torch.stack((p[:, 3], p[:, 7], torch.ones_like(p[:, 0])), -1)[..., None]), 2)
    proj = Xh @ (Rvt @ P).transpose(1, 2)
    d = (proj[..., :2] / proj[..., 2:3] - xn) * fxy[:, None]
    sq_err = (w * (d * d).sum(-1)).sum(-1)
    return Rvt @ R, (Rvt @ t[..., None])[..., 0], reversed_, sq_err


def _irls(X: Tensor, R: Tensor, t: Tensor, xn: Tensor, fxy: Tensor, w: Tensor,
          delta: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """Robust cost, Gauss–Newton Hessian and gradient at ``(R, t)`` for a left SE(3) update.

    Residuals ``r = diag(fx, fy) (π(X_c) − x_n)`` are exactly pixel errors for a zero-skew K.
    For a point in Huber's linear zone (``s = ‖r‖ > δ``) the 2x2 curvature of ``ρ(‖r‖)`` is
    ``(δ/s)(I − r̂ r̂ᵀ)``, not IRLS's ``(δ/s) I``; using it keeps Newton-like convergence where
    IRLS would crawl. Returns ``cost (B,)``, ``H (B,6,6)``, ``g (B,6)``.
    """
    Xc = X @ R.transpose(1, 2) + t[:, None]
    iz = 1.0 / Xc[..., 2]
    x = Xc[..., 0] * iz
    y = Xc[..., 1] * iz
    fx, fy = fxy[:, 0:1], fxy[:, 1:2]
    ru = fx * (x - xn[..., 0])
    rv = fy * (y - xn[..., 1])
    s2 = ru * ru + rv * rv
    xy = x * y
    zero = torch.zeros_like(x)
    Ju = torch.stack((-xy, 1 + x * x, -y, iz, zero, -x * iz), -1) * fx[..., None]
    Jv = torch.stack((-1 - y * y, xy, x, zero, iz, -y * iz), -1) * fy[..., None]
    J = torch.cat((Ju, Jv), 1)  # (B, 2N, 6)
    r = torch.cat((ru, rv), 1)[..., None]
    if delta is None:
        a = w
        cost = 0.5 * (w * s2).sum(-1)
    else:
        s = s2.clamp_min(delta * delta).sqrt()
        inlier = s2 <= delta * delta
        a = torch.where(inlier, w, w * (delta / s))
        cost = (w * torch.where(inlier, 0.5 * s2, delta * (s - 0.5 * delta))).sum(-1)
    Ja = (J * torch.cat((a, a), 1)[..., None]).transpose(1, 2)
    H = Ja @ J
    g = (Ja @ r)[..., 0]
    if delta is not None:
        q = Ju * ru[..., None] + Jv * rv[..., None]  # (B, N, 6) = J_iᵀ r_i
        b = torch.where(inlier, torch.zeros_like(s), a / (s * s))
        H = H - (q * b[..., None]).transpose(1, 2) @ q
    return cost, H, g


def _solve(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Tensor, iterations: int,
           huber_delta: Optional[float], tol: float):
    B, N = points_2d.shape[:2]
    dtype, device = points_2d.dtype, points_2d.device
    finite = (torch.isfinite(points_2d).flatten(1).all(1) & torch.isfinite(points_3d).flatten(1).all(1)
              & torch.isfinite(K).flatten(1).all(1) & torch.isfinite(weights).all(1)
              & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0) & ((weights > 0).sum(1) >= 6)
              & (weights >= 0).all(1))
    # Work on sanitised copies so a bad problem cannot put NaN/inf into shared batched kernels.
    fb = ~finite
    K = torch.where(fb[:, None, None], torch.eye(3, dtype=dtype, device=device), K)
    w = torch.where(fb[:, None], torch.ones_like(weights), weights)
    X3 = torch.where(fb[:, None, None], _dummy_points(N, dtype, device), points_3d)
    x2 = torch.where(fb[:, None, None], torch.zeros_like(points_2d), points_2d)

    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    xn = torch.stack(((x2[..., 0] - cx[:, None]) / fx[:, None], (x2[..., 1] - cy[:, None]) / fy[:, None]), -1)
    fxy = torch.stack((fx, fy), -1)

    wsum = w.sum(1, keepdim=True)
    c = (w[..., None] * X3).sum(1, keepdim=True) / wsum[..., None]
    Xc = X3 - c
    scale = ((w * (Xc * Xc).sum(-1)).sum(1, keepdim=True) / wsum).sqrt().clamp_min(torch.finfo(dtype).tiny)
    Xs = Xc / scale[..., None]
    m2 = (w[..., None] * xn).sum(1, keepdim=True) / wsum[..., None]
    flat3 = _flatness(Xs, w) < _DEGENERATE_RATIO
    flat2 = _flatness(xn - m2, w) < _DEGENERATE_RATIO

    R, t, reversed_, dlt_sq = _dlt(xn, Xs, w, fxy)

    # Levenberg–Marquardt, fully batched: a rejected step restores the best state and raises
    # the damping; no per-problem control flow.
    cost, H, g = _irls(Xs, R, t, xn, fxy, w, huber_delta)
    lam = torch.full((B, 1), 1e-3, dtype=dtype, device=device)
    eye6 = torch.eye(6, dtype=dtype, device=device)
    slack = 1000 * N * torch.finfo(dtype).eps
    iters = 0
    for iters in range(1, iterations + 1):
        Hd = H + lam[..., None] * (eye6 * H.diagonal(dim1=-2, dim2=-1)[:, None, :] + 1e-12 * eye6)
        step, _ = torch.linalg.solve_ex(Hd, -g[..., None])
        step = step[..., 0]
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        dR = _so3_exp(step[:, :3])
        Rn = dR @ R
        tn = (dR @ t[..., None])[..., 0] + step[:, 3:]
        cn, Hn, gn = _irls(Xs, Rn, tn, xn, fxy, w, huber_delta)
        # Near the optimum cost differences drown in rounding and the last, tiny Gauss-Newton
        # steps would be rejected ~sqrt(eps) short of it: accept a cost tie if the gradient shrinks.
        tie = (cn <= cost + slack * cost.abs()) & ((gn * gn).sum(-1) < (g * g).sum(-1))
        better = (cn < cost) | tie
        b1, b3 = better[:, None], better[:, None, None]
        R = torch.where(b3, Rn, R)
        t = torch.where(b1, tn, t)
        H = torch.where(b3, Hn, H)
        g = torch.where(b1, gn, g)
        cost = torch.where(better, cn, cost)
        lam = torch.where(b1, (lam * 0.1).clamp_min(1e-9), lam * 10)
        if tol > 0 and iters < iterations:
            converged = (step.abs().amax(-1) < tol) | ~finite
            if bool(converged.all()):
                break

    # Back to the caller's model frame: x_cam = s (R Xs + t) = R X + (s t - R c).
    t = scale * t - (R @ c.transpose(1, 2))[..., 0]
    Xcam = points_3d @ R.transpose(1, 2) + t[:, None]
    proj = Xcam[..., :2] / Xcam[..., 2:3]
    err2 = (((proj - xn) * torch.stack((fx, fy), -1)[:, None]) ** 2).sum(-1)
    rms = err2.mean(-1).sqrt()
    # Seen from behind: the projective DLT fit needed a reversed depth row AND fits far better
    # than the best pose in front (F-test style; ratio 16 ~ p < 1e-3 for 9 points). Far small
    # objects, where the depth row is noise, pass: there the data cannot tell.
    behind = reversed_ & ((w * err2).sum(-1) > 16 * dlt_sq + 1e-4 * N)
    failed = (~finite | flat3 | flat2 | behind | (Xcam[..., 2] <= 0).any(-1)
              | ~torch.isfinite(R).flatten(1).all(1) | ~torch.isfinite(t).all(1) | ~torch.isfinite(rms))
    f1, f2_ = failed[:, None], failed[:, None, None]
    R = torch.where(f2_, torch.eye(3, dtype=dtype, device=device), R)
    t = torch.where(f1, t.new_tensor([0.0, 0.0, 1.0]), t)
    rms = torch.where(failed, torch.full_like(rms, float("inf")), rms)
    return R, t, failed, rms, iters


def _dummy_points(N: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A fixed, well-spread, non-coplanar ``(N, 3)`` set used in place of invalid problems."""
    i = torch.arange(N, dtype=dtype, device=device)
    ang = i * 2.399963  # golden angle: no two points coincide for any N
    return 0.1 * torch.stack((ang.cos(), ang.sin(), (i % 3 - 1) * 0.5), -1)


# ----------------------------------------------------------------------------------------------
# Implicit-function-theorem backward


def _objective(delta: Tensor, R0: Tensor, t0: Tensor, x2: Tensor, X3: Tensor, K: Tensor,
               w: Tensor, huber_delta: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """Robust reprojection objective of pose ``exp(delta) ∘ (R0, t0)``, per problem ``(B,)``.

    ``exp`` is expanded to second order: exact value, gradient and Hessian at ``delta = 0``,
    which is all the implicit function theorem uses, and free of the ``sqrt`` at zero.
    """
    S = _skew(delta[:, :3])
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    dR = eye + S + 0.5 * (S @ S)
    R = dR @ R0
    t = (dR @ t0[..., None])[..., 0] + delta[:, 3:]
    Xc = X3 @ R.transpose(1, 2) + t[:, None]
    uv = Xc[..., :2] / Xc[..., 2:3]
    uv = uv * torch.stack((K[:, 0, 0], K[:, 1, 1]), -1)[:, None] + K[:, None, :2, 2]
    s2 = ((uv - x2) ** 2).sum(-1)
    if huber_delta is None:
        rho = 0.5 * s2
    else:
        d = huber_delta
        s = s2.clamp_min(d * d).sqrt()
        rho = torch.where(s2 <= d * d, 0.5 * s2, d * (s - 0.5 * d))
    return (w * rho).sum(-1), R, t


class _PnPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points_2d, points_3d, K, weights, iterations, huber_delta, tol):
        R, t, failed, err, iters = _solve(points_2d, points_3d, K, weights, iterations, huber_delta, tol)
        ctx.save_for_backward(points_2d, points_3d, K, weights, R, t, failed)
        ctx.huber_delta = huber_delta
        iters_t = torch.tensor(iters)
        ctx.mark_non_differentiable(failed, err, iters_t)
        return R, t, failed, err, iters_t

    @staticmethod
    def backward(ctx, grad_R, grad_t, _gf, _ge, _gi):
        points_2d, points_3d, K, weights, R, t, failed = ctx.saved_tensors
        B, N = points_2d.shape[:2]
        dtype, device = points_2d.dtype, points_2d.device
        needs = ctx.needs_input_grad[:4]
        if grad_R is None:
            grad_R = torch.zeros_like(R)
        if grad_t is None:
            grad_t = torch.zeros_like(t)
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(n) for x, n in zip((points_2d, points_3d, K, weights), needs)]
            f1, f3 = failed[:, None], failed[:, None, None]
            # Failed problems are swapped for a finite dummy: where() routes them zero gradient.
            x2 = torch.where(f3, torch.zeros_like(points_2d), inputs[0])
            X3 = torch.where(f3, _dummy_points(N, dtype, device), inputs[1])
            Kc = torch.where(f3, torch.eye(3, dtype=dtype, device=device), inputs[2])
            w = torch.where(f1, torch.ones_like(weights), inputs[3])
            delta = torch.zeros(B, 6, dtype=dtype, device=device, requires_grad=True)
            f, Rd, td = _objective(delta, R, t, x2, X3, Kc, w, ctx.huber_delta)
            (g,) = torch.autograd.grad(f.sum(), delta, create_graph=True)
            H = torch.stack([torch.autograd.grad(g[:, k].sum(), delta, retain_graph=True)[0]
                             for k in range(6)], 1)
            (dL,) = torch.autograd.grad((grad_R * Rd).sum() + (grad_t * td).sum(), delta,
                                        retain_graph=True)
            H = torch.where(f3, torch.eye(6, dtype=dtype, device=device), H.detach())
            lam, _ = torch.linalg.solve_ex(H, -dL[..., None])
            lam = lam[..., 0]
            bad = failed | ~torch.isfinite(lam).all(1)
            lam = torch.where(bad[:, None], torch.zeros_like(lam), lam)
            wanted = [x for x, n in zip(inputs, needs) if n]
            grads = torch.autograd.grad(g, wanted, grad_outputs=lam, allow_unused=True)
        out = []
        it = iter(grads)
        for x, n in zip(inputs, needs):
            if not n:
                out.append(None)
                continue
            gx = next(it)
            if gx is None:
                gx = torch.zeros_like(x)
            gx = torch.where(torch.isfinite(gx), gx, torch.zeros_like(gx))
            out.append(gx)
        return (*out, None, None, None)


class PnPLayer(torch.nn.Module):
    """``nn.Module`` holding the solver settings; ``forward`` is :func:`solve_pnp`."""

    def __init__(self, iterations: int = 10, huber_delta: Optional[float] = 5.0,
                 tol: Optional[float] = None) -> None:
        super().__init__()
        self.iterations, self.huber_delta, self.tol = iterations, huber_delta, tol

    def forward(self, points_2d: Tensor, points_3d: Tensor, K: Tensor,
                weights: Optional[Tensor] = None) -> PnPResult:
        return solve_pnp(points_2d, points_3d, K, weights, self.iterations, self.huber_delta, self.tol)


__all__ = ["PnPResult", "solve_pnp", "PnPLayer"]
