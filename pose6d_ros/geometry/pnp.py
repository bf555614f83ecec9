"""Batched, differentiable Perspective-n-Point in torch (CPU and CUDA, float32 and float64).

Forward (no autograd graph, inference mode): a closed-form DLT initialisation on normalised
data, then Levenberg–Marquardt on SE(3) with Huber weights, every problem of the batch at once (a
few iterations with an early exit, analytic Jacobians, batched 6x6 solves). Its cost at small
batch sizes is the number of torch ops (a few µs each on the CPU), which the code keeps low.
Backward: the implicit function theorem at the optimum (as BPnP, Chen et al. 2020): with
``g(θ, x) = ∂f/∂θ = 0`` at the solution, ``dθ/dx = -H⁻¹ ∂g/∂x`` where ``H`` is the exact Hessian
of the robust reprojection objective ``f``, written out analytically: in the solver's own units
from its final state for the 2D points (:func:`_linearise`, :func:`_grad_points_2d`), and as a
differentiable function of every input otherwise (:func:`_stationarity`).
This is the ``P(h, K_crop) → y`` block of ``docs/method.md``.
Its plain, readable twin (DLT + least-squares LM, no tables; tests compare the two): ``geometry/pnp_reference.py``.

Conventions: ``x_cam = R @ x_model + t``; pixels in the OpenCV convention (``docs/conventions.md``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

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


#: Most LM iterations by default. The early exit stops a batch at 3 at 1 px noise; 15 rather than
#: 10 because the undamped first step, when rejected, costs an iteration: at 5 px noise, 10 left 53
#: of 1,000 problems off the optimum by > 1e-2 in R, 15 leave 14 (the damped start's 10 left 39).
DEFAULT_ITERATIONS = 15


def check_pnp_inputs(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Optional[Tensor]) -> Tensor:
    """The checks every PnP entry point makes; returns ``points_3d`` as ``(B, N, 3)`` (a shared
    ``(N, 3)`` model is expanded over the batch).

    Raises:
        ValueError: a shape or batch size that does not fit, or fewer than 6 points.
        TypeError: inputs of different dtypes.
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
        raise TypeError(f"points_2d/points_3d/K: dtypes differ ({points_2d.dtype}, {points_3d.dtype}, {K.dtype})")
    return points_3d


def solve_pnp(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Optional[Tensor] = None,
              iterations: int = DEFAULT_ITERATIONS, huber_delta: Optional[float] = 5.0,
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
            ``1e-4`` for float64 and ``1e-3`` for float32; ``0`` runs all iterations). Steps are
            in radians and in units of the model points' RMS radius. The last step is applied,
            and each Gauss–Newton step shrinks the distance to the optimum by a large factor, so
            the pose ends far closer than ``tol`` to it (float64, 1 px noise, 1,000 problems:
            within 3.3e-7 in R and 5e-8 relative in t at ``1e-4``); float32's rounding floor
            is ~1e-5.

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
    points_3d = check_pnp_inputs(points_2d, points_3d, K, weights)
    B, N = points_2d.shape[:2]
    if tol is None:
        # float64 at 1e-4, not lower: that stops at 3 steps at 1 px noise where 1e-6 ran 4-5 (and
        # 1e-5 mostly 4), while the applied last step leaves the pose within 3.3e-7 in R (5e-8
        # relative in t) of the converged optimum on 1,000 problems: noise-free problems stay at
        # ~1e-13 (the DLT start is exact there) and the error statistics against the truth are
        # unchanged to 4 digits. float32 cannot resolve much below 1e-3 per step anyway.
        tol = 1e-4 if points_2d.dtype == torch.float64 else 1e-3
    tensors = (points_2d, points_3d, K, weights)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        R, t, failed, err, iters = _PnPFunction.apply(*tensors, iterations, huber_delta, tol)
        return PnPResult(R, t, failed, err, int(iters))
    R, t, failed, err, iters, _ = _solve_outside_autograd(*tensors, iterations, huber_delta, tol)
    return PnPResult(R, t, failed, err, iters)


def _solve_outside_autograd(*args):
    """:func:`_solve` in inference mode (~12% fewer µs per op than ``no_grad`` at small batch
    sizes, where the op count is the cost), its tensors cloned back to normal tensors unless
    the caller is in inference mode too (an inference tensor cannot enter autograd later).
    The solver state (last item) stays as it is: only the backward reads it, in inference mode."""
    if torch.is_inference_mode_enabled():
        return _solve(*args)
    with torch.inference_mode():
        R, t, failed, err, iters, state = _solve(*args)
    return R.clone(), t.clone(), failed.clone(), err.clone(), iters, state


# ----------------------------------------------------------------------------------------------
# Forward solver (no autograd)
#
# Layout: per-point quantities are (B, k, N) "component-major" slabs, so that the per-problem
# sums over points are batched matrix products and no op gathers or interleaves tiny last
# dimensions (cat/stack on a size-3 last dimension costs ~15x an elementwise op at B=1024). At
# small B the cost is the op count (~2 µs each): an LM iteration is ~50 Python-level torch calls, views included.

# vec([w]x) = _SKEW @ w (row-major vec).
_SKEW = ((0, 0, 0), (0, 0, -1), (0, 1, 0), (0, 0, 1), (0, 0, 0), (-1, 0, 0), (0, -1, 0), (1, 0, 0), (0, 0, 0))
# Rows of the Jacobian pool (see :func:`_linearise`) that make J̃ᵀ, parameter-major, u before v:
# Q = E + q (s q)ᵀ at 0-8 (q = (x, y, 1), s = (1, -1, 1), E = diag(1, -1, 0)), then x/z, y/z,
# 1/z at 9-11, the residuals at 12-13 and a zero row at 14.
_POOL_ROWS = (1, 4, 0, 3, 7, 6, 11, 14, 14, 11, 9, 10, 12, 13)
# The exact Hessian (see :func:`_linearise`) extends the pool with q x u3 at 15-17, z⁻¹ ū at
# 18-20 and u3 at 21-23, and gathers per parameter p the four segments of its left rows
# [J̃_u, J̃_v, n_p, (u3; 0)_p] and right rows [J̃_u, J̃_v, −m_p, (q; 0)_p] (p = 6: the residual).
_N_ROWS = (15, 16, 17, 18, 19, 20, 14)
_U3_ROWS = (21, 22, 23, 14, 14, 14, 14)
_M_ROWS = (7, 6, 14, 14, 14, 11, 14)
_Q_ROWS = (2, 5, 8, 14, 14, 14, 14)
_EXACT_ROWS = tuple(r for third, fourth in ((_N_ROWS, _U3_ROWS), (_M_ROWS, _Q_ROWS)) for p in range(7)
                    for r in (_POOL_ROWS[2 * p], _POOL_ROWS[2 * p + 1], third[p], fourth[p]))


@dataclass(frozen=True)
class _Constants:
    dummy_3d: Tensor  # (N, 3) well-spread, non-coplanar points replacing an invalid problem's
    dummy_2d: Tensor  # (N, 2) their exact projection at R = I, t = (0, 0, 1), K = I
    dummy_Xh: Tensor  # (4, N) the dummy in the solver's units: [Xs; 1] (centred, unit RMS radius),
    dummy_xn: Tensor  # (2, N) its normalised image points
    dummy_T: Tensor  # (3, 4) and its exact pose there, [I | (c + e_z) / s]
    eye3: Tensor
    eye6: Tensor
    eye4: Tensor
    ones: Tensor  # (1, N): unit weights
    zero: Tensor  # (1, 1, N)
    wn_unit: Tensor  # (1, 1, N): unit weights normalised to sum 1
    rsqrt_n: Tensor  # 1/√N
    flat2_form: Tensor  # (16, 1): vec(c cᵀ) @ flat2_form = 4 det(C2) − ratio tr(C2)², c = vec(C2)
    had: Tensor  # (2, 2) [[1, 1], [1, −1]], and had_s = had / √2 (orthogonal)
    had_s: Tensor
    e_z: Tensor  # (3, 1)
    diag_flip: Tensor  # diag(1, 1, -1)
    flip_neg: Tensor  # (3, 1): (-1, -1, 1)
    step_rot: Tensor  # (6, 9): vec([ω]x) = sol @ step_rot, ω = -sol[:3]
    step_trans: Tensor  # (6, 12): vec([0 | v]) = sol @ step_trans, v = (-sol3, -sol4, sol5)
    step_theta: Tensor  # (6, 1): |ω|²/4 = sol² @ step_theta
    pool_E: Tensor  # (3, 3, 1)
    pool_sign: Tensor  # (3, 1)
    pool_rows: Tensor  # (14,) int64
    exact_rows: Tensor  # (56,) int64
    exact_seg: Tensor  # (1, 2, 1): weights of the n and (u3; 0) segments of the left rows
    flip_z: Tensor  # (3, 1): (1, 1, −1)
    half: Tensor
    lm_down: Tensor
    lm_up: Tensor
    lm_floor: Tensor  # (6, 6): the damping λ diag(H) restarts from 1e-3 after a rejected step at λ = 0
    slack: Tensor  # 1 + 1000 N eps: a cost tie
    one: Tensor
    inf: Tensor
    t_failed: Tensor


@functools.lru_cache(maxsize=64)
def _constants(N: int, dtype: torch.dtype, device: torch.device) -> _Constants:
    # Never inference tensors, even when the first call comes from inference mode: the cached
    # tensors are reused by later autograd calls.
    with torch.inference_mode(False), torch.no_grad():
        kw = dict(dtype=dtype, device=device)
        i = torch.arange(N, **kw)
        ang = i * 2.399963  # golden angle: no two points coincide for any N
        d3 = 0.1 * torch.stack((ang.cos(), ang.sin(), (i % 3 - 1) * 0.5), -1)
        d2 = d3[:, :2] / (d3[:, 2:] + 1)
        dc = d3.mean(0)
        ds = torch.linalg.vector_norm(d3 - dc) * N ** -0.5
        dXh = torch.cat(((d3 - dc).T / ds, torch.ones(1, N, **kw)))
        dT = torch.cat((torch.eye(3, **kw), ((dc + torch.tensor([0.0, 0.0, 1.0], **kw)) / ds)[:, None]), 1)
        eye6 = torch.eye(6, **kw)
        r = _DEGENERATE_RATIO
        form = torch.zeros(4, 4, **kw)  # over vec(C2) = (c00, c01, c10, c11)
        form[0, 3] = form[3, 0] = 2 - r
        form[1, 2] = form[2, 1] = -2.0
        form[0, 0] = form[3, 3] = -r
        had = torch.tensor([[1.0, 1.0], [1.0, -1.0]], **kw)
        step_rot = torch.zeros(6, 9, **kw)
        step_rot[:3] = -torch.tensor(_SKEW, **kw).T
        step_trans = torch.zeros(6, 3, 4, **kw)
        step_trans[3:, :, 3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0], **kw))
        return _Constants(
            dummy_3d=d3, dummy_2d=d2, dummy_Xh=dXh, dummy_xn=d2.T.contiguous(), dummy_T=dT,
            eye3=torch.eye(3, **kw), eye6=eye6, eye4=torch.eye(4, **kw),
            ones=torch.ones(1, N, **kw), zero=torch.zeros(1, 1, N, **kw), wn_unit=torch.full((1, 1, N), 1.0 / N, **kw),
            rsqrt_n=torch.tensor(N ** -0.5, **kw),
            flat2_form=form.view(16, 1), had=had, had_s=math.sqrt(0.5) * had,
            e_z=torch.tensor([[0.0], [0.0], [1.0]], **kw), diag_flip=torch.diag(torch.tensor([1.0, 1.0, -1.0], **kw)),
            flip_neg=torch.tensor([[-1.0], [-1.0], [1.0]], **kw),
            step_rot=step_rot, step_trans=step_trans.view(6, 12),
            step_theta=torch.tensor([[0.25], [0.25], [0.25], [0.0], [0.0], [0.0]], **kw),
            pool_E=torch.diag(torch.tensor([1.0, -1.0, 0.0], **kw))[..., None],
            pool_sign=torch.tensor([[1.0], [-1.0], [1.0]], **kw),
            pool_rows=torch.tensor(_POOL_ROWS, dtype=torch.int64, device=device),
            exact_rows=torch.tensor(_EXACT_ROWS, dtype=torch.int64, device=device),
            exact_seg=torch.tensor([[[1.0], [0.5]]], **kw), flip_z=torch.tensor([[1.0], [1.0], [-1.0]], **kw),
            half=torch.tensor(0.5, **kw),
            lm_down=torch.tensor(0.1, **kw), lm_up=torch.tensor(10.0, **kw), lm_floor=1e-3 * eye6,
            slack=torch.tensor(1 + 1000 * N * torch.finfo(dtype).eps, **kw),
            one=torch.ones((), **kw), inf=torch.tensor(float("inf"), **kw), t_failed=torch.tensor([0.0, 0.0, 1.0], **kw))


def _dlt(xn: Tensor, Xh: Tensor, wn: Tensor, m2: Tensor,
         k: _Constants) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Weighted DLT with ``t_z = 1`` normalisation, in a virtual camera facing the points.

    ``Xs`` is centred, so ``t_z`` is the depth of the model centre, > 0 for an object in front of
    the camera. The camera is first rotated (``R_v``) so that the mean viewing ray ``m2`` is its
    optical axis: the image points are then centred (Hartley's normalisation, done by a rotation
    so that the DLT form is kept), which stops the poorly observed perspective row ``m3`` from
    leaking into ``m1, m2`` for small, far objects.

    The least-squares system is solved by elimination, not as one 11x11 system: in a whitened
    basis ``X̂ = L⁻¹ [Xs; 1]`` (``L Lᵀ = Σ w [Xs; 1][Xs; 1]ᵀ``, Cholesky), the rows of ``P`` for
    ``u`` and ``v`` are ``m_c = S_c m̂3`` with ``S_c = Σ w x_c X̂ X̂ᵀ`` and ``m̂3 = (m3, 1)``, and
    ``m3`` solves the 3x3 Schur complement ``(S_ρ − Σ_c S_c²)[:3] m̂3 = 0``, ``ρ = x_u² + x_v²``
    (the same minimiser, in the same basis change that LU's first pivots would make).
    ``R`` is the symmetric orthonormalisation of ``m1, m2`` (not the polar factor, but within a
    few degrees of it, which is all LM needs, and no batched SVD), ``r3 = r1 x r2``.

    Args: ``xn (B,2,N)`` normalised image points, ``Xh (B,4,N)`` = ``[Xs; 1]`` with ``Xs``
    centred and of unit weighted RMS, ``wn (B,1,N)`` weights summing to 1, ``m2 (B,2,1)``
    weighted mean of ``xn``.

    Returns ``T (B,3,4) = [R | t]``, ``reversed (B,)`` (``m3`` opposite to ``m1 x m2``: the
    projective fit sees the points from behind), ``flat3 (B,)`` (the model points are coplanar
    or collinear: ``det Σ w Xs Xsᵀ < ratio/27`` or a failed Cholesky), and the virtual
    rotation ``Rv (B,3,3)`` and projective camera ``P (B,3,4)`` for :func:`_dlt_sq_err`.
    """
    B, N = xn.shape[0], xn.shape[2]
    one = k.one.expand(B, 1, 1)
    ray = torch.cat((m2, one), 1)
    # Rv = D (I − 2 n nᵀ), D = diag(1, 1, −1), n ∝ a + e_z: two reflections, a -> −e_z -> e_z,
    # so the rotation about a x e_z taking a to e_z; |a + e_z|² = 2 (1 + a_z) = 2 (a + e_z)_z.
    u = ray / torch.linalg.vector_norm(ray, dim=1, keepdim=True) + k.e_z
    Rv = torch.addcmul(k.diag_flip, u * k.flip_neg, (u / u[:, 2:]).mT)
    bear = torch.baddbmm(Rv[:, :, 2:], Rv[:, :, :2], xn)
    xv = bear[:, :2] / bear[:, 2:]
    Xhw = Xh * wn
    L, info = torch.linalg.cholesky_ex(torch.bmm(Xhw, Xh.mT))
    # prod(diag L)² = det Σ w Xs Xsᵀ (trace 1; the homogeneous row adds a factor ~1).
    flat3 = (L.diagonal(dim1=1, dim2=2).prod(1) < math.sqrt(_DEGENERATE_RATIO / 27)) | (info != 0)
    Li = torch.linalg.solve_triangular(L, k.eye4, upper=False)
    Xw = torch.bmm(Li, Xh)
    c = torch.cat((xv, (xv * xv).sum(1, keepdim=True)), 1)
    S = torch.bmm((c[:, :, None] * (Xw * wn)[:, None]).view(B, 12, N), Xw.mT)  # S_u, S_v, S_ρ
    Su = S[:, :8]
    Dm = torch.baddbmm(S[:, 8:11], Su[:, :, :3].mT, Su, alpha=-1.0)
    m3, _ = torch.linalg.solve_ex(Dm[:, :, :3], Dm[:, :, 3:])
    m3h = torch.cat((m3.neg(), one), 1)
    Pw = torch.cat((torch.bmm(Su, m3h).view(B, 2, 4), m3h.mT), 1)
    P = torch.bmm(Pw, Li)  # back to the [Xs; 1] basis
    m12 = P[:, :2, :3]
    nab = torch.linalg.vector_norm(m12, dim=2, keepdim=True)
    cd = torch.matmul(k.had, m12 / nab)  # a + b, a − b of the unit rows a, b: orthogonal
    r12 = torch.matmul(k.had_s, cd / torch.linalg.vector_norm(cd, dim=2, keepdim=True))
    r3 = torch.linalg.cross(r12[:, 0], r12[:, 1])
    reversed_ = torch.linalg.vecdot(P[:, 2, :3], r3) < 0
    Rt = torch.cat((torch.cat((r12, r3[:, None]), 1), P[:, :, 3:] / nab.mean(1, keepdim=True)), 2)
    T = torch.bmm(Rv.mT, Rt)
    return T, reversed_, flat3, Rv, P


def _dlt_sq_err(Rv: Tensor, P: Tensor, Xh: Tensor, xn: Tensor, f2: Tensor, wn: Tensor) -> Tensor:
    """The DLT's projective camera's weighted squared reprojection error in pixels (``(B,)``,
    normalised weights): the unconstrained reference the constrained optimum is tested against."""
    proj = torch.bmm(Rv.mT @ P, Xh)
    d = proj[:, :2] / proj[:, 2:] - xn
    return ((d * d * f2).sum(1) * wn[:, 0]).sum(1)


class _Data(NamedTuple):
    """Per-solve tensors shared by every linearisation (see :func:`_solve`)."""

    Xh: Tensor  # (B, 4, N) [Xs; 1], centred unit-RMS model points
    xn: Tensor  # (B, 2, N) normalised image points
    f: Tensor  # (B, 2, 1) focal lengths
    f2: Tensor  # (B, 2, 1) squared focal lengths
    w: Tensor  # (B, N) weights
    wf2: Tensor  # (B, 1, 2N) weights of the (u, v) rows: w f²
    zero: Tensor  # (B, 1, N) zeros
    delta: Optional[float]  # Huber threshold, pixels
    on_cpu: bool
    k: _Constants


def _linearise(T: Tensor, d: _Data, exact: bool = False, parts: bool = False):
    """Robust cost, Hessian and gradient at ``T = [R | t]`` for a left SE(3) update.

    Residuals ``r = diag(fx, fy) (π(X_c) − x_n)`` are exactly pixel errors for a zero-skew K.
    For a point in Huber's linear zone (``s = ‖r‖ > δ``) the 2x2 curvature of ``ρ(‖r‖)`` is
    ``(δ/s)(I − r̂ r̂ᵀ)``, not IRLS's ``(δ/s) I``; using it keeps Newton-like convergence where
    IRLS would crawl. On the CPU that work is skipped when no point of the batch is in the
    linear zone.

    One product gives everything: with the per-point rows ``[J̃ | r̃]`` in normalised units
    and weights ``a f²``, ``[J̃ r̃]ᵀ W [J̃ r̃] = [[H, g], [gᵀ, Σ a s²]]``. In the solver's
    parameters (``ω, t`` with ``t_z`` negated) the Jacobian rows are
    ``J̃_u = (−xy, 1+x², −y, 1/z, 0, x/z)``, ``J̃_v = (−1−y², xy, x, 0, 1/z, y/z)``: every entry
    is one of ``E + q (s q)ᵀ`` (``q = (x, y, 1)``, constant ``E``, ``s``), ``q/z``, the
    residual or zero, so a pool of those slabs and one row gather build them (few ops: at small
    batch sizes the cost is the op count).

    ``exact`` (for the backward): ``H`` is the exact Hessian of the robust objective (the same
    as :func:`_stationarity`'s, in these units and parameters): the Gauss–Newton part plus
    ``−Σ (n mᵀ + m nᵀ) + Σ sym(u3 qᵀ)_ωω`` with ``ū = (a f² r̃, γ)``, ``γ = ū_x x + ū_y y``,
    ``u3 = (ū_x, ū_y, −γ)``, ``n = (q x u3, ū/z)`` (the projection's second order) and
    ``m = (y, −x, 0, 0, 0, −1/z)``; the last term is ``exp``'s second order (its trace part
    vanishes: ``u3 · q = 0``). Written as ``S + Sᵀ`` with ``S = L Rᵀ`` over four segments of
    per-point rows, it is one gather and one product as well.

    Returns ``M (B,7,7)`` (``H = M[:, :6, :6]``, ``g = M[:, :6, 6]``) and ``2 × cost (B,)``; with
    ``parts``, also ``J̃ (B,6,2,N)``, ``a f² (B,2,N)``, ``r̃ (B,2,N)`` and ``b (B,N)`` (``None``
    outside Huber's linear zone), the 2x2 curvature being ``a I − b e eᵀ``, ``e = f r̃``.
    """
    B, N = d.w.shape
    k = d.k
    Pc = torch.bmm(T, d.Xh)
    iz = Pc[:, 2:].reciprocal()
    q = Pc * iz
    rt = q[:, :2] - d.xn
    delta = d.delta
    # The check costs a device sync: on CUDA the Huber terms are always computed. On the CPU,
    # |r_u|, |r_v| <= δ/√2 at every point (two cheap ops) is enough to skip them; when that
    # fails, the exact test (any s > δ) decides.
    linear_zone = delta is not None
    if linear_zone and d.on_cpu:
        if B == 0:
            linear_zone = False
        else:
            lo, hi = (rt * d.f).aminmax()
            bound = delta * math.sqrt(0.5)
            linear_zone = not (-float(lo) <= bound and float(hi) <= bound)
    if linear_zone:
        rf2 = rt * d.f2
        s2 = (rt * rf2).sum(1)
        linear_zone = not d.on_cpu or bool((s2 > delta * delta).any())
    if linear_zone:
        s = s2.clamp_min(delta * delta).sqrt()
        a = d.w * delta / s
        wf2 = (a[:, None] * d.f2).reshape(B, 1, 2 * N)
    else:
        wf2 = d.wf2
    Q = torch.addcmul(k.pool_E, q[:, :, None], (q * k.pool_sign)[:, None])
    slabs = [Q.view(B, 9, N), q * iz, rt, d.zero]
    if not exact:
        JT = torch.cat(slabs, 1).index_select(1, k.pool_rows).view(B, 7, 2 * N)
        M = torch.bmm(JT * wf2, JT.mT)
    else:
        af2 = wf2.view(B, 2, N)
        p2 = rt * af2
        ub = torch.cat((p2, (p2 * q[:, :2]).sum(1, keepdim=True)), 1)
        u3 = ub * k.flip_z
        slabs += [torch.linalg.cross(q, u3, dim=1), iz * ub, u3]
        rows = torch.cat(slabs, 1).index_select(1, k.exact_rows)
        seg = torch.cat((af2 * k.half, k.exact_seg.expand(B, 2, N)), 1)
        right = rows[:, 28:].view(B, 7, 4 * N)
        S = torch.bmm((rows[:, :28].view(B, 7, 4, N) * seg[:, None]).view(B, 7, 4 * N), right.mT)
        M = S + S.mT

    def J6() -> Tensor:  # J̃ (B, 6, 2, N), built only when needed (two ops fewer per step otherwise)
        return right[:, :6].view(B, 6, 4, N)[:, :, :2] if exact else JT[:, :6].view(B, 6, 2, N)

    bfac = None
    if linear_zone:
        qh = (J6() * rf2[:, None]).sum(2)
        bfac = torch.where(s2 > delta * delta, a / s2, 0.0)
        M[:, :6, :6].sub_(torch.bmm(qh * bfac[:, None], qh.mT))
        # 2 Σ w ρ = Σ a s² + Σ w δ (s − δ): the two differ only in the linear zone.
        cost2 = M[:, 6, 6] + (d.w * (s - delta)).sum(1) * delta
    else:
        cost2 = M[:, 6, 6]
    if parts:
        return M, cost2, (J6(), wf2.view(B, 2, N), rt, bfac)
    return M, cost2


def _solve(points_2d: Tensor, points_3d: Tensor, K: Tensor, weights: Optional[Tensor], iterations: int,
           huber_delta: Optional[float], tol: float):
    """The forward solve of :func:`solve_pnp` (no autograd): ``R, t, failed, rms, iterations``
    and the solver's final state ``(T, data, scale)`` (normalised pose, :class:`_Data`, model
    scale) for the backward.

    ``weights=None`` is unit weights (their checks and normalisation are then skipped)."""
    B, N = points_2d.shape[:2]
    dtype, device = points_2d.dtype, points_2d.device
    k = _constants(N, dtype, device)
    on_cpu = device.type == "cpu"
    unit = weights is None
    # A NaN or inf anywhere in a problem's inputs reaches its sum (so does an overflowing sum of
    # finite values, ~1e38 in float32: flagged too); total − total is then NaN, else 0, and
    # NaN > 0 is False.
    total = points_2d.sum((1, 2)) + points_3d.sum((1, 2)) + K.sum((1, 2))
    f = K.diagonal(dim1=1, dim2=2)[:, :2, None]
    if unit:
        valid = (total - total + f.amin((1, 2))) > 0
        w = k.ones.expand(B, N)
    else:
        w = weights
        total = total + w.sum(1)
        valid = ((total - total + f.amin((1, 2))) > 0) & (w.amin(1) >= 0) & ((w > 0).sum(1) >= 6)
    # Sanitised copies, so that a bad problem cannot put NaN/inf into shared batched kernels:
    # an exactly solvable dummy problem, which also converges at once. (On the CPU, where the
    # check costs no device sync, the no-op where()s of an all-valid batch are skipped.)
    bad = ~valid
    x2, X3 = points_2d, points_3d
    if not on_cpu or bool(bad.any()):
        b3 = bad[:, None, None]
        x2 = torch.where(b3, k.dummy_2d, x2)
        X3 = torch.where(b3, k.dummy_3d, X3)
        K = torch.where(b3, k.eye3, K)
        w = torch.where(bad[:, None], k.one, w)
        f = K.diagonal(dim1=1, dim2=2)[:, :2, None]
        unit = False

    f2 = f * f
    xn = (x2.transpose(1, 2) - K[:, :2, 2:]) / f
    wn = k.wn_unit.expand(B, 1, N) if unit else (w / w.sum(1, keepdim=True))[:, None]
    XT = X3.transpose(1, 2)
    cen = (XT * wn).sum(2, keepdim=True)
    Xc = XT - cen
    # The weighted RMS radius (unit weights: a norm, fewer ops).
    scale = (torch.linalg.vector_norm(Xc, dim=(1, 2), keepdim=True) * k.rsqrt_n if unit
             else (Xc * Xc * wn).sum((1, 2), keepdim=True).sqrt()).clamp_min(torch.finfo(dtype).tiny)
    Xh = torch.cat((Xc / scale, k.one.expand(B, 1, N)), 1)
    m2 = (xn * wn).sum(2, keepdim=True)
    d = xn - m2
    # (The collinearity test below is scale-free: unit weights skip the 1/N.)
    C2 = torch.bmm(d if unit else d * wn, d.mT).view(B, 4, 1)
    # Collinear image points: 4 det(C2) < ratio tr(C2)², a quadratic form in vec(C2).
    flat2 = torch.mm((C2 * C2.mT).view(B, 16), k.flat2_form).view(B) < 0

    T, reversed_, flat3, Rv, P = _dlt(xn, Xh, wn, m2, k)
    # Flat point sets (coplanar/collinear model points, collinear image points) leave no usable
    # DLT pose: their LM steps are NaN, which never pass the early exit, so one such problem kept
    # its whole batch running every iteration. Swapped, like invalid inputs above, for the dummy
    # problem at its exact pose, in the solver's units: it converges at once (it is flagged
    # below). (The CPU skips the no-op where()s of a batch without one.)
    flat = flat3 | flat2
    if not on_cpu or bool(flat.any()):
        b3 = flat[:, None, None]
        Xh = torch.where(b3, k.dummy_Xh, Xh)
        xn = torch.where(b3, k.dummy_xn, xn)
        f = torch.where(b3, k.one, f)
        f2 = f * f
        T = torch.where(b3, k.dummy_T, T)
        reversed_ = reversed_ & ~flat  # flagged already: no need for the projective-error test
        if not unit:
            w = torch.where(flat[:, None], k.one, w)

    # Levenberg–Marquardt, fully batched: a rejected step keeps the previous state and raises
    # the damping; no per-problem control flow. The damping starts at 0 (a Gauss–Newton step):
    # H is ill-conditioned along the depth/scale direction, where even λ = 1e-3 of diag(H)
    # shortens the first step ~5x and costs an iteration.
    wf2 = f2.expand(B, 2, N).reshape(B, 1, 2 * N) if unit else (w[:, None] * f2).reshape(B, 1, 2 * N)
    data = _Data(Xh, xn, f, f2, w, wf2, k.zero.expand(B, 1, N), huber_delta,
                 on_cpu, k)
    M, cost = _linearise(T, data)
    lam: Optional[Tensor] = None  # λ I (B, 6, 6); None while it is 0 for every problem
    iters = 0
    for iters in range(1, (iterations if B else 0) + 1):
        # Marquardt's damping, H + λ diag(H). A singular system gives a non-finite step, whose
        # cost is NaN: rejected below.
        H = M[:, :6, :6]
        sol = torch.linalg.solve_ex(H if lam is None else torch.addcmul(H, H, lam), M[:, :6, 6:])[0].view(B, 6)
        # Cayley retraction dR = I + (S + S²/2) / (1 + θ²/4), S = [ω]x: a rotation, second-order
        # equal to exp(S), with no trigonometry or small-angle branch. The step is -sol with
        # the solver's sign flips, folded into the constants.
        S = torch.mm(sol, k.step_rot).view(B, 3, 3)
        A = torch.baddbmm(S, S, S, alpha=0.5) / torch.addmm(k.one, sol * sol, k.step_theta).view(B, 1, 1)
        Tn = torch.baddbmm(torch.mm(sol, k.step_trans).view(B, 3, 4).add_(T), A, T)
        # Every step below tol: take it unchecked and stop (NaN compares False, so a failed
        # solve never stops the loop). Gauss–Newton gains ~40x per step at 1 px noise, so the
        # pose lands far closer to the optimum than tol, and the cost of a step that small
        # drowns in rounding anyway.
        if tol > 0:
            lo, hi = sol.aminmax()
            if -float(lo) < tol and float(hi) < tol:
                T = Tn
                break
        Mn, cn = _linearise(Tn, data)
        # Every step taken at λ = 0 with a lower cost (the common case; on the CPU the check is
        # no device sync): the where()s below would copy Tn, Mn and cn and keep λ = 0, and the
        # tie-break below could only accept more.
        if on_cpu and lam is None and bool((cn < cost).all()):
            T, M, cost = Tn, Mn, cn
            continue
        # Near the optimum cost differences drown in rounding and the last, tiny Gauss-Newton
        # steps would be rejected ~sqrt(eps) short of it: accept a cost tie if the gradient shrinks.
        g, gn = M[:, :6, 6], Mn[:, :6, 6]
        better = cn < torch.where(torch.linalg.vecdot(gn, gn) < torch.linalg.vecdot(g, g), cost * k.slack, cost)
        if on_cpu and lam is None and bool(better.all()):
            T, M, cost = Tn, Mn, cn
            continue
        b3 = better.view(B, 1, 1)
        T = torch.where(b3, Tn, T)
        M = torch.where(b3, Mn, M)
        cost = torch.where(better, cn, cost)
        lam = torch.where(b3, lam * k.lm_down, torch.addcmul(k.lm_floor, lam, k.lm_up)) if lam is not None \
            else torch.where(b3, 0.0 * k.lm_floor, k.lm_floor)

    # Back to the caller's model frame: x_cam = s (R Xs + t) = R X + (s t - R c).
    Pc = torch.bmm(T, Xh)
    rt = Pc[:, :2] / Pc[:, 2:] - xn
    err2 = (rt * rt * f2).sum(1)
    rms = err2.mean(1).sqrt()
    R = T[:, :, :3]
    t = torch.baddbmm(scale.view(B, 1, 1) * T[:, :, 3:], R, cen, alpha=-1.0).view(B, 3)
    fin = rms + t.sum(1)  # a non-finite R or t makes rms NaN
    flags = [bad, flat, Pc[:, 2].amin(1) <= 0, fin - fin != 0]
    # Seen from behind: the projective DLT fit needed a reversed depth row AND fits far better
    # than the best pose in front (F-test style; ratio 16 ~ p < 1e-3 for 9 points). Far small
    # objects, where the depth row is noise, pass: there the data cannot tell. (The CPU skips
    # it when no problem has a reversed depth row: the check is no device sync there.)
    if not on_cpu or bool(reversed_.any()):
        dlt_sq = _dlt_sq_err(Rv, P, Xh, xn, f2, wn)
        flags.append(reversed_ & ((wn[:, 0] * err2).sum(1) > 16 * dlt_sq + 1e-4))
    failed = torch.stack(flags).any(0)
    if not on_cpu or bool(failed.any()):
        R = torch.where(failed[:, None, None], k.eye3, R)
        t = torch.where(failed[:, None], k.t_failed, t)
        rms = torch.where(failed, k.inf, rms)
    return R, t, failed, rms, iters, (T, data, scale)


# ----------------------------------------------------------------------------------------------
# Implicit-function-theorem backward


def _stationarity(x2: Tensor, X3: Tensor, K: Tensor, w: Tensor, R: Tensor, t: Tensor,
                  huber_delta: Optional[float], eye3: Tensor):
    """Gradient ``g (B,6)`` and exact Hessian ``H (B,6,6)`` of ``f`` at ``(R, t)``, analytic.

    The pose is perturbed on the left, ``P(δ) = exp(ω) P + v`` with ``δ = (ω, v)`` and
    ``P = R X + t``. With ``e = f ⊙ π(P) + c − u`` (pixels), ``φ = ρ'(s)/s · w e`` and
    ``J = ∂e/∂δ = A D`` (``A = ∂e/∂P``, ``D = [−[P]x | I]``): ``g = Σ Jᵀ φ`` and

        H = Σ Jᵀ W J + Σ Dᵀ (Σ_k φ_k ∇²e_k) D + Σ [½(c Pᵀ + P cᵀ) − (c·P) I]_ωω,

    where ``W = a I − b e eᵀ`` is the 2x2 curvature of ``w ρ(‖e‖)`` (``a = w ρ'/s``; ``b = a/s²``
    in Huber's linear zone, else 0), ``c = Aᵀ φ`` and the last term is ``exp``'s second order
    (BPnP, Chen et al. 2020, needs exactly this Hessian; unrolling the solver would not).
    ``∇²e`` of the projection is ``(f/z²)[[0, 0, −1], [0, 0, 0], [−1, 0, 2x]]`` for ``u``.

    ``eye3`` is the cached 3x3 identity. Returns ``g, H`` and ``JT (B,6,2,N)``, ``a, b (B,N)``,
    ``e (B,2,N)`` for the closed-form 2D gradient; ``b`` is ``None`` when no point is in Huber's
    linear zone (always so without Huber), as ``b = 0`` there.
    """
    B, N = x2.shape[:2]
    P = torch.baddbmm(t[:, :, None], R, X3.transpose(1, 2))
    iz = P[:, 2].reciprocal()
    x, y = P[:, 0] * iz, P[:, 1] * iz
    f = K.diagonal(dim1=1, dim2=2)[:, :2, None]
    e = torch.stack((x, y), 1) * f + K[:, :2, 2:] - x2.transpose(1, 2)
    s2 = (e * e).sum(1)
    # Huber's linear zone, if any point is in it (the check is a device sync: CUDA always assumes so).
    d2 = None if huber_delta is None else huber_delta * huber_delta
    b: Optional[Tensor] = None
    if d2 is None or (x2.device.type == "cpu" and not bool((s2 > d2).any())):
        a = w
    else:
        s = s2.clamp_min(d2).sqrt()
        a = w * huber_delta / s
        b = torch.where(s2 > d2, a / s2, 0.0)
    zero = torch.zeros_like(x)
    xy = x * y
    JT = torch.stack((torch.stack((-xy, 1 + x * x, -y, iz, zero, -x * iz), 1) * f[:, :1],
                      torch.stack((-1 - y * y, xy, x, zero, iz, -y * iz), 1) * f[:, 1:]), 2)
    phi = a[:, None] * e
    g = (JT * phi[:, None]).sum((2, 3))
    JTf = JT.reshape(B, 6, 2 * N)
    H = (JTf * a.repeat(1, 2)[:, None]) @ JTf.mT
    if b is not None:
        q = (JT * e[:, None]).sum(2)
        H = H - (q * b[:, None]) @ q.mT
    al, be = f[:, 0] * phi[:, 0], f[:, 1] * phi[:, 1]
    gam = al * x + be * y
    iz2 = iz * iz
    hx, hy = al * iz2, be * iz2
    X, Y, Z = P.unbind(1)
    # Dᵀ(Σ φ_k ∇²e_k)D = −(n mᵀ + m nᵀ) + 2γ/z² m mᵀ with m = Dᵀe_z, n = Dᵀ(h_x, h_y, 0).
    n = torch.stack((-hy * Z, hx * Z, hy * X - hx * Y, hx, hy, zero), 1)
    m = torch.stack((Y, -X, zero, zero, zero, torch.ones_like(x)), 1)
    nm = n @ m.mT
    H = H - nm - nm.mT + (m * (2 * gam * iz2)[:, None]) @ m.mT
    CP = (torch.stack((al, be, -gam), 1) * iz[:, None]) @ P.mT
    Hww = 0.5 * (CP + CP.mT) - CP.diagonal(dim1=1, dim2=2).sum(1)[:, None, None] * eye3
    H = H + torch.nn.functional.pad(Hww, (0, 3, 0, 3))
    return g, H, JT, a, b, e


# Batch size x points up to which the 2D-points backward uses the solver's state (see backward).
_STATE_GRAD_MAX_POINTS = 1536


class _PnPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points_2d, points_3d, K, weights, iterations, huber_delta, tol):
        R, t, failed, err, iters, state = _solve_outside_autograd(points_2d, points_3d, K, weights, iterations,
                                                                  huber_delta, tol)
        ctx.save_for_backward(points_2d, points_3d, K, weights, R, t, failed)
        ctx.huber_delta = huber_delta
        ctx.state = state  # intermediate (inference) tensors: kept on ctx, not saved for autograd
        iters_t = torch.tensor(iters)
        ctx.mark_non_differentiable(failed, err, iters_t)
        return R, t, failed, err, iters_t

    @staticmethod
    def backward(ctx, grad_R, grad_t, _gf, _ge, _gi):
        points_2d, points_3d, K, weights, R, t, failed = ctx.saved_tensors
        N = points_2d.shape[1]
        k = _constants(N, points_2d.dtype, points_2d.device)
        needs = ctx.needs_input_grad[:4]
        if grad_R is None:
            grad_R = torch.zeros_like(R)
        if grad_t is None:
            grad_t = torch.zeros_like(t)
        if weights is None:
            weights = k.ones.expand(points_2d.shape[0], N)
        args = (grad_R, grad_t, R, t, failed, ctx.huber_delta, k)
        if not any(needs[1:]):
            # No autograd graph is needed: inference mode (less overhead per op), the result
            # cloned back to a normal tensor for autograd. Small batches: the exact Hessian from
            # the solver's state (fewer ops); large ones: from the inputs (less data moved: the
            # state's one wide gather and 7x(4N)x7 product cost more than they save there).
            with torch.inference_mode():
                if points_2d.shape[0] * N <= _STATE_GRAD_MAX_POINTS:
                    gx = _grad_points_2d(grad_R, grad_t, R, t, failed, *ctx.state)
                else:
                    _, lam, JT, a, b, e = _implicit_lambda((points_2d, points_3d, K, weights), *args)
                    # ∂g/∂u_n = −J_nᵀ W_n, so dL/du_n = λᵀ ∂g/∂u_n = −W_n J_n λ.
                    Jl = (JT * lam[:, :, None, None]).sum(1)
                    Wl = a[:, None] * Jl
                    if b is not None:
                        Wl = Wl - (b * (e * Jl).sum(1))[:, None] * e
                    gx = Wl.neg().transpose(1, 2)
                    gx = torch.where(torch.isfinite(gx), gx, 0.0)
            return gx.clone(), None, None, None, None, None, None
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(n) for x, n in zip((points_2d, points_3d, K, weights), needs)]
            g, lam, *_ = _implicit_lambda(inputs, *args)
        wanted = [x for x, n in zip(inputs, needs) if n]
        grads = iter(torch.autograd.grad(g, wanted, grad_outputs=lam, allow_unused=True))
        out = []
        for x, n in zip(inputs, needs):
            gx = next(grads) if n else None
            if n and gx is None:
                gx = torch.zeros_like(x)
            out.append(None if gx is None else torch.where(torch.isfinite(gx), gx, 0.0))
        return (*out, None, None, None)


def _grad_points_2d(grad_R: Tensor, grad_t: Tensor, R: Tensor, t: Tensor, failed: Tensor, T: Tensor,
                    data: _Data, scale: Tensor) -> Tensor:
    """``dL/d points_2d (B,N,2)`` by the implicit function theorem, in the solver's own units.

    The forward's final state gives the exact Hessian ``H̃`` of the robust objective in the
    solver's parameters ``δ̃ = (ω, ṽ)`` (normalised model frame, ``t_z`` negated), one
    :func:`_linearise` (``exact``): ``t = s t̃ − R c`` makes the camera-frame translation step
    ``v = s (ṽ_x, ṽ_y, −ṽ_z)``, so ``dL/dδ̃ = (dL/dω, s (dL/dv_x, dL/dv_y, −dL/dv_z))``. With
    ``λ̃ = −H̃⁻¹ dL/dδ̃`` and ``∂g̃/∂u = −J̃ᵀ diag(f) W`` (``r̃ = q − (u − c)/f``):
    ``dL/du = −W f J̃ λ̃``. Failed or non-finite problems get zero.
    """
    k = data.k
    B = T.shape[0]
    M, _, (J6, af2, rt, bfac) = _linearise(T, data, exact=True, parts=True)
    # dL/dδ for R(δ) = exp(ω) R, t(δ) = exp(ω) t + v: Σ_j Y_j x G_j over the columns of [R | t].
    Y = torch.cat((R, t[:, :, None]), 2)
    G = torch.cat((grad_R, grad_t[:, :, None]), 2)
    dL = torch.cat((torch.linalg.cross(Y, G, dim=1).sum(2), grad_t * (scale.view(B, 1) * k.flip_z.view(1, 3))), 1)
    sol = torch.linalg.solve_ex(M[:, :6, :6], dL[..., None])[0].view(B, 6)  # −λ̃
    bad = failed | (sol - sol != 0).any(1)
    sol = torch.where(bad[:, None], 0.0, sol)
    Jl = (J6 * sol[:, :, None, None]).sum(1)  # −J̃ λ̃, (B, 2, N)
    # W (f Jl) with W = a I − b e eᵀ, a f² = af2, e = f r̃ (pixels).
    gx = af2 / data.f * Jl
    if bfac is not None:
        e = rt * data.f
        gx = gx - (bfac * (e * Jl * data.f).sum(1))[:, None] * e
    gx = gx.transpose(1, 2)
    return torch.where(torch.isfinite(gx), gx, 0.0)


def _implicit_lambda(inputs, grad_R: Tensor, grad_t: Tensor, R: Tensor, t: Tensor, failed: Tensor,
                     huber_delta: Optional[float], k: _Constants):
    """``g`` (the stationarity residual, differentiable w.r.t. ``inputs`` when they require
    grad), ``λ = −H⁻¹ dL/dδ`` (detached; zero for failed problems) and the pieces of
    :func:`_stationarity` for the closed-form 2D gradient: ``dL/dx = λᵀ ∂g/∂x``."""
    x2, X3, Kc, w = inputs
    f3 = failed[:, None, None]
    # Failed problems are swapped for the dummy problem, solved exactly by their returned
    # (R, t): where() routes them zero gradient. (On the CPU, where the check costs no device
    # sync, a batch without failures skips the no-op where()s.)
    any_failed = x2.device.type != "cpu" or bool(failed.any())
    if any_failed:
        x2 = torch.where(f3, k.dummy_2d, x2)
        X3 = torch.where(f3, k.dummy_3d, X3)
        Kc = torch.where(f3, k.eye3, Kc)
        w = torch.where(failed[:, None], k.one, w)
    g, H, JT, a, b, e = _stationarity(x2, X3, Kc, w, R, t, huber_delta, k.eye3)
    # dL/dδ for R(δ) = exp(ω) R, t(δ) = exp(ω) t + v: Σ_j Y_j x G_j over the columns of [R | t].
    Y = torch.cat((R, t[:, :, None]), 2)
    G = torch.cat((grad_R, grad_t[:, :, None]), 2)
    dL = torch.cat((torch.linalg.cross(Y, G, dim=1).sum(2), grad_t), 1)
    H = torch.where(f3, k.eye6, H.detach()) if any_failed else H.detach()
    lam, _ = torch.linalg.solve_ex(H, dL[..., None])
    lam = -lam[..., 0]
    bad = failed | ~torch.isfinite(lam).all(1)
    lam = torch.where(bad[:, None], 0.0, lam)
    return g, lam, JT.detach(), a.detach(), None if b is None else b.detach(), e.detach()


class PnPLayer(torch.nn.Module):
    """``nn.Module`` holding the solver settings; ``forward`` is :func:`solve_pnp`."""

    def __init__(self, iterations: int = DEFAULT_ITERATIONS, huber_delta: Optional[float] = 5.0,
                 tol: Optional[float] = None) -> None:
        super().__init__()
        self.iterations, self.huber_delta, self.tol = iterations, huber_delta, tol

    def forward(self, points_2d: Tensor, points_3d: Tensor, K: Tensor,
                weights: Optional[Tensor] = None) -> PnPResult:
        return solve_pnp(points_2d, points_3d, K, weights, self.iterations, self.huber_delta, self.tol)


__all__ = ["PnPResult", "solve_pnp", "PnPLayer"]
