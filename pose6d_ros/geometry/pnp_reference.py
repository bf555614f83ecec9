"""Plain, readable batched PnP: the reference twin of :mod:`pose6d_ros.geometry.pnp`.

:func:`solve_pnp_reference` solves the same problem as :func:`pose6d_ros.geometry.pnp.solve_pnp`
with ``huber_delta=None`` (weighted least squares on the pixel reprojection error) in the most
direct way we know, so that the fast solver has something simple to be checked against and a
reader has something simple to learn it from:

1. **DLT initialisation** (Hartley & Zisserman, *Multiple View Geometry*, Alg. 7.1): image points
   taken to normalised camera coordinates with ``K⁻¹``; Hartley's normalisation of both point
   sets; the 3x4 camera ``P ∝ [R | t]`` as the smallest right singular vector of the 2N x 12 DLT
   system; its sign set so that the points lie in front of the camera; ``R`` the closest
   rotation (SVD) to the first two rows of ``P[:, :3]`` and their cross product, ``t = P[:, 3]``
   over those rows' scale.
2. **Levenberg–Marquardt** on ``½ Σ_i w_i ‖π(K, R X_i + t) − u_i‖²`` (pixels), the model points
   centred on their weighted mean and the pose updated by ``R ← exp([ω]x) R``, ``t ← t + v``
   (a turn about the object's own centre: rotation and translation steps barely couple, which
   keeps the 6x6 system well conditioned), and the 2N x 6 Jacobian written as
   the plain chain rule through the camera-frame points (:func:`_jacobian`; the residuals come
   from :func:`~pose6d_ros.geometry.keypoints.project_points`). Marquardt's
   damping ``H + λ diag(H)``, ``λ`` per problem (÷10 on an accepted step, x10 on a rejected
   one), until every problem's step is below ``tol``.

Every op acts on the whole batch at once; the only Python loop is over LM iterations.

What the fast solver adds (and this one leaves out on purpose): a robust Huber loss with its
exact 2x2 curvature; a damping schedule tuned for few iterations (an undamped first step, cost
ties accepted while the gradient shrinks, an early exit at a looser tolerance); a DLT solved by
elimination in a virtual camera facing the points instead of by SVD; flat-point-set tests
without eigen-decompositions, with the flat problems swapped for a dummy in its own units; an
F-test that flags a point set seen from behind; and the implicit-function-theorem backward (this
one has no gradient). Its index tables and constants record exist to keep the op count low at
small batch sizes. It works in normalised units, where float32 keeps more digits: this one is
meant for float64 (in float32 its poses land within ~1e-4 rad of the float64 optimum on
weak-perspective problems, ~1e-6 typically).

Conventions: ``x_cam = R @ x_model + t``; pixels in the OpenCV convention
(``docs/conventions.md``); ``K``'s skew, if any, is honoured (the fast solver assumes none).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from pose6d_ros.geometry.keypoints import project_points
from pose6d_ros.geometry.pnp import PnPResult, check_pnp_inputs

#: A point set is flat (coplanar or collinear 3D points, collinear 2D points) when the smallest
#: eigenvalue of its covariance is below this fraction of the largest: the DLT cannot fit it.
FLAT_RATIO = 1e-7

#: Default LM iteration cap. The batch runs until its slowest problem converges: 12-20 iterations
#: for 200 problems at 1 px noise (most problems need 5).
DEFAULT_ITERATIONS = 50


def solve_pnp_reference(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Optional[Tensor] = None,
                        iterations: int = DEFAULT_ITERATIONS, tol: Optional[float] = None) -> PnPResult:
    """Solve a batch of PnP problems by DLT + Levenberg–Marquardt (least squares, no gradient).

    Minimises ``Σ_i w_i ‖π(K, R X_i + t) − u_i‖²`` (pixels) over proper rotations ``R`` and
    translations ``t``, for every problem of the batch at once. The result is the same as
    ``solve_pnp(..., huber_delta=None)`` up to the solvers' stopping tolerances.

    A problem is flagged ``failed`` (and returns ``R = I``, ``t = (0, 0, 1)``,
    ``reprojection_error = inf``) when its inputs are not finite, a focal length is not positive,
    a weight is negative, fewer than 6 points have positive weight, its 3D points are coplanar
    or collinear (the 12-parameter DLT cannot fit them), its 2D points are collinear, any point
    lies at ``z <= 0`` at the solution, or the solution is not finite. Failed problems never
    affect the others: they are solved on a stand-in problem and their result is replaced.

    Differences from :func:`~pose6d_ros.geometry.pnp.solve_pnp`: no Huber loss (always least
    squares); no autograd (the outputs carry no gradient); a point set seen from behind (a
    mirror image) is flagged only through ``z <= 0`` at the solution, not by the fast solver's
    F-test, so such a problem may come back unflagged with a large ``reprojection_error`` (and
    keep the batch iterating to the cap).

    Args:
        points_2d: ``(B, N, 2)`` observed pixels (undistorted).
        points_3d: ``(B, N, 3)`` or ``(N, 3)`` model points, ``N >= 6``.
        K: ``(B, 3, 3)`` intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.
        weights: optional ``(B, N)`` non-negative per-point weights.
        iterations: maximum LM iterations.
        tol: stop once every problem's proposed step is below ``tol`` (rotation in radians,
            translation relative to the object's mean depth). ``None``: ``1e-10`` for float64,
            ``1e-5`` for float32.

    Returns:
        :class:`~pose6d_ros.geometry.pnp.PnPResult`: ``R (B,3,3)``, ``t (B,3)``,
        ``failed (B,)``, ``reprojection_error (B,)`` (unweighted RMS over the N points,
        pixels) and ``iterations`` (LM iterations run, the same for the whole batch).

    Example:
        >>> K = torch.tensor([[[500., 0, 320], [0, 500, 240], [0, 0, 1]]], dtype=torch.float64)
        >>> X = torch.tensor([[x, y, z] for x in (-.05, .05) for y in (-.05, .05) for z in (-.05, .05)],
        ...                  dtype=torch.float64)
        >>> uv = project_points(X, torch.eye(3, dtype=torch.float64)[None],
        ...                     torch.tensor([[0.01, 0.02, 0.5]], dtype=torch.float64), K)
        >>> res = solve_pnp_reference(uv, X, K)
        >>> res.t.round(decimals=6), res.failed
        (tensor([[0.0100, 0.0200, 0.5000]], dtype=torch.float64), tensor([False]))
    """
    points_3d = check_pnp_inputs(points_2d, points_3d, K, weights)
    if weights is None:
        weights = torch.ones_like(points_2d[..., 0])
    if tol is None:
        tol = 1e-10 if points_2d.dtype == torch.float64 else 1e-5

    with torch.no_grad():
        return _solve(points_2d, points_3d, K, weights, iterations, tol)


def _solve(uv: Tensor, X: Tensor, K: Tensor, w: Tensor, iterations: int, tol: float) -> PnPResult:
    """:func:`solve_pnp_reference` on checked inputs, ``weights`` given (``w (B, N)``)."""
    B = uv.shape[0]
    dtype, device = uv.dtype, uv.device
    eye3 = torch.eye(3, dtype=dtype, device=device)
    t_failed = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    if B == 0:
        return PnPResult(eye3.expand(0, 3, 3), t_failed.expand(0, 3), torch.zeros(0, dtype=torch.bool, device=device),
                         uv.new_zeros(0), 0)

    # 1. Which problems can be solved at all. Bad ones are swapped for a stand-in problem that is
    # solved exactly at R = I, t = (0, 0, 1), so that no NaN or rank-deficient system reaches
    # the batched SVDs and solves; their result is replaced by the failure value at the end.
    finite = (torch.isfinite(uv).all((1, 2)) & torch.isfinite(X).all((1, 2)) & torch.isfinite(K).all((1, 2))
              & torch.isfinite(w).all(1))
    invalid = ~finite | (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0) | (w < 0).any(1) | ((w > 0).sum(1) < 6)
    uv, X, K, w = _replace_with_stand_in(invalid, uv, X, K, w)
    xn = _normalised_image_points(uv, K)
    flat = _is_flat(X, w) | _is_flat(xn, w)
    uv, X, K, w = _replace_with_stand_in(flat, uv, X, K, w)
    xn = _normalised_image_points(uv, K)

    # 2. Closed-form start, then Levenberg–Marquardt, both on the model points centred on their
    # weighted mean: x_cam = R (X − c) + t_c, so t = t_c − R c.
    c = (w[..., None] * X).sum(1, keepdim=True) / w.sum(1)[:, None, None]
    R, t_c = _dlt(xn, X - c, w)
    R, t_c, iters = _levenberg_marquardt(R, t_c, X - c, uv, K, w, iterations, tol)
    t = t_c - (R @ c.mT)[..., 0]

    # 3. Results, and the problems that failed after all.
    X_cam = X @ R.mT + t[:, None]
    rms = (project_points(X, R, t, K) - uv).square().sum(2).mean(1).sqrt()
    failed = invalid | flat | (X_cam[..., 2] <= 0).any(1) | ~torch.isfinite(rms + t.sum(1) + R.sum((1, 2)))
    R = torch.where(failed[:, None, None], eye3, R)
    t = torch.where(failed[:, None], t_failed, t)
    rms = torch.where(failed, torch.inf, rms)
    return PnPResult(R, t, failed, rms, iters)


def _replace_with_stand_in(which: Tensor, uv: Tensor, X: Tensor, K: Tensor,
                           w: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Swap the problems ``which (B,)`` for a well-posed one: ``N`` non-coplanar points on a
    spiral, K = I, unit weights, observed exactly at ``R = I``, ``t = (0, 0, 1)``."""
    N = uv.shape[1]
    i = torch.arange(N, dtype=uv.dtype, device=uv.device)
    angle = 2.4 * i  # about the golden angle: no two points coincide for any N
    X_stand_in = 0.1 * torch.stack((angle.cos(), angle.sin(), (i % 3 - 1) * 0.5), 1)
    uv_stand_in = X_stand_in[:, :2] / (X_stand_in[:, 2:] + 1.0)
    b3 = which[:, None, None]
    return (torch.where(b3, uv_stand_in, uv), torch.where(b3, X_stand_in, X),
            torch.where(b3, torch.eye(3, dtype=K.dtype, device=K.device), K), torch.where(which[:, None], 1.0, w))


def _normalised_image_points(uv: Tensor, K: Tensor) -> Tensor:
    """``(B, N, 2)`` pixels -> ``(B, N, 2)`` normalised camera coordinates ``K⁻¹ [u, v, 1]``."""
    uv1 = torch.cat((uv, torch.ones_like(uv[..., :1])), 2)
    return torch.linalg.solve(K, uv1.mT).mT[..., :2]


def _is_flat(points: Tensor, w: Tensor) -> Tensor:
    """``(B,)``: the weighted covariance of ``points (B, N, D)`` has an eigenvalue below
    ``FLAT_RATIO`` times its largest (checked in float64, so that the ratio means the same in
    float32)."""
    p, wn = points.double(), (w / w.sum(1, keepdim=True)).double()[..., None]
    centred = p - (wn * p).sum(1, keepdim=True)
    eig = torch.linalg.eigvalsh((wn * centred).mT @ centred)  # ascending
    return eig[:, 0] <= FLAT_RATIO * eig[:, -1]


def _similarity_normalisation(points: Tensor, w: Tensor) -> Tensor:
    """Hartley's normalisation of ``points (B, N, D)``: ``(B, D+1, D+1)`` homogeneous matrices that
    move the weighted centroid to the origin and scale the weighted RMS distance to ``√D``."""
    D = points.shape[2]
    wn = (w / w.sum(1, keepdim=True))[..., None]
    centroid = (wn * points).sum(1)
    rms = ((wn * (points - centroid[:, None]).square()).sum((1, 2))).sqrt()
    s = (D ** 0.5 / rms)[:, None]
    T = torch.diag_embed(torch.cat((s.expand(-1, D), torch.ones_like(s)), 1))
    T[:, :D, D] = -s * centroid
    return T


def _homogeneous(points: Tensor) -> Tensor:
    return torch.cat((points, torch.ones_like(points[..., :1])), -1)


def _dlt(xn: Tensor, X: Tensor, w: Tensor) -> Tuple[Tensor, Tensor]:
    """Weighted DLT: ``R (B,3,3)``, ``t (B,3)`` from normalised image points ``xn (B,N,2)``,
    model points ``X (B,N,3)`` and weights ``w (B,N)``."""
    B, N = w.shape
    T2 = _similarity_normalisation(xn, w)
    T3 = _similarity_normalisation(X, w)
    x = (_homogeneous(xn) @ T2.mT)[..., :2]  # (B, N, 2) normalised image points
    Xh = _homogeneous(X) @ T3.mT  # (B, N, 4) normalised model points, homogeneous
    # Each point gives two rows of A p = 0, p = vec(P) row-major:
    #   [Xhᵀ, 0, −x Xhᵀ] and [0, Xhᵀ, −y Xhᵀ], weighted by √w.
    zero = torch.zeros_like(Xh)
    rows_u = torch.cat((Xh, zero, -x[..., :1] * Xh), 2)
    rows_v = torch.cat((zero, Xh, -x[..., 1:] * Xh), 2)
    A = torch.cat((rows_u, rows_v), 1) * w.sqrt().repeat(1, 2)[..., None]  # (B, 2N, 12)
    P_normalised = torch.linalg.svd(A, full_matrices=False).Vh[:, -1].view(B, 3, 4)
    P = torch.linalg.solve(T2, P_normalised) @ T3  # undo both normalisations: P ∝ [R | t]
    # P is known up to sign: take the one that puts the (weighted) points in front of the camera.
    depth = (w * (_homogeneous(X) @ P[:, 2:].mT)[..., 0]).sum(1)
    P = P * torch.where(depth < 0, -1.0, 1.0)[:, None, None]
    # R: the closest rotation to P[:, :3] up to scale. Only its first two rows are used: for a
    # small, far object the perspective effect that fixes the third row is lost in the noise
    # (it can even come out mirrored), so the third row is rebuilt as their cross product.
    m1, m2 = P[:, 0, :3], P[:, 1, :3]
    scale = (m1.norm(dim=1) * m2.norm(dim=1)).sqrt()[:, None]
    M = torch.stack((m1, m2, torch.linalg.cross(m1, m2) / scale), 1)
    U, _, Vh = torch.linalg.svd(M)  # det M > 0, so U Vᵀ is a proper rotation
    R = U @ Vh
    t = P[:, :, 3] / scale
    return R, t


def _skew(v: Tensor) -> Tensor:
    """``(B, 3)`` -> ``(B, 3, 3)`` cross-product matrices, ``[v]x a = v x a``."""
    x, y, z = v.unbind(1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), 1).view(-1, 3, 3)


def _jacobian(R: Tensor, t: Tensor, X: Tensor, uv: Tensor, K: Tensor) -> Tuple[Tensor, Tensor]:
    """Residuals ``r (B, 2N)`` (pixels, ``u`` and ``v`` of each point in turn) and their Jacobian
    ``J (B, 2N, 6)`` w.r.t. the step ``δ = (ω, v)`` of :func:`_apply_step` at ``δ = 0``.

    The chain rule through ``P = R X + t`` (camera frame): ``P(δ) = exp([ω]x) R X + t + v``
    gives ``∂P/∂δ = [−[R X]x | I]``, and the projection ``K[:2] (P / z)`` has
    ``∂uv/∂P = K[:2, :2] [[1, 0, −x/z], [0, 1, −y/z]] / z``."""
    B, N = X.shape[:2]
    r = project_points(X, R, t, K) - uv  # (B, N, 2)
    RX = X @ R.mT  # (B, N, 3)
    x, y, z = (RX + t[:, None]).unbind(2)
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    d_normalised = torch.stack((one, zero, -x / z, zero, one, -y / z), 2).view(B, N, 2, 3) / z[..., None, None]
    d_uv_dP = K[:, None, :2, :2] @ d_normalised  # (B, N, 2, 3)
    d_P_d_delta = torch.cat((-_skew(RX.reshape(-1, 3)).view(B, N, 3, 3),
                             torch.eye(3, dtype=RX.dtype, device=RX.device).expand(B, N, 3, 3)), 3)  # (B, N, 3, 6)
    J = d_uv_dP @ d_P_d_delta  # (B, N, 2, 6)
    return r.reshape(B, 2 * N), J.reshape(B, 2 * N, 6)


def _apply_step(R: Tensor, t: Tensor, delta: Tensor) -> Tuple[Tensor, Tensor]:
    """The update ``R ← exp([ω]x) R``, ``t ← t + v`` of ``δ = (ω, v) (B, 6)``: with centred
    model points, a turn by ``ω`` (camera axes) about the object's centre and a shift by ``v``."""
    return torch.linalg.matrix_exp(_skew(delta[:, :3])) @ R, t + delta[:, 3:]


def _levenberg_marquardt(R: Tensor, t: Tensor, X: Tensor, uv: Tensor, K: Tensor, w: Tensor, iterations: int,
                         tol: float) -> Tuple[Tensor, Tensor, int]:
    """Minimise ``½ Σ w ‖r‖²`` from ``(R, t)`` (``X`` centred); returns the pose and the
    iterations run."""
    w2 = w.repeat_interleave(2, 1)  # (B, 2N): the weight of each point, on its u and v rows
    lam = torch.full_like(w[:, 0], 1e-3)  # Marquardt's λ, per problem
    r, J = _jacobian(R, t, X, uv, K)
    cost = 0.5 * (w2 * r * r).sum(1)
    iters = 0
    for iters in range(1, iterations + 1):
        H = J.mT @ (w2[..., None] * J)  # (B, 6, 6) Gauss–Newton Hessian
        g = J.mT @ (w2 * r)[..., None]  # (B, 6, 1) gradient
        damped = H + lam[:, None, None] * torch.diag_embed(H.diagonal(dim1=1, dim2=2))
        delta = -torch.linalg.solve_ex(damped, g)[0][..., 0]
        R_new, t_new = _apply_step(R, t, delta)
        r_new, J_new = _jacobian(R_new, t_new, X, uv, K)
        cost_new = 0.5 * (w2 * r_new * r_new).sum(1)
        # Keep the step where the cost did not rise (a NaN cost never passes); raise λ elsewhere.
        accept = cost_new <= cost
        R = torch.where(accept[:, None, None], R_new, R)
        t = torch.where(accept[:, None], t_new, t)
        r = torch.where(accept[:, None], r_new, r)
        J = torch.where(accept[:, None, None], J_new, J)
        cost = torch.where(accept, cost_new, cost)
        lam = torch.where(accept, lam * 0.1, lam * 10.0).clamp(1e-12, 1e12)
        # Converged when every proposed step is tiny: rotation in radians, translation relative
        # to the object's mean depth. (NaN compares False: a problem gone NaN stops at the cap.)
        depth = (X @ R.mT + t[:, None])[..., 2].mean(1).abs()
        step = torch.maximum(delta[:, :3].norm(dim=1), delta[:, 3:].norm(dim=1) / depth)
        if bool((step < tol).all()):
            break
    return R, t, iters


__all__ = ["solve_pnp_reference", "DEFAULT_ITERATIONS", "FLAT_RATIO"]
