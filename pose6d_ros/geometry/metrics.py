"""Pose-error metrics following the BOP definitions (bop_toolkit_lib/pose_error.py names).

All functions are batched over ``B`` pose pairs of ONE object: ``R_est, R_gt`` are ``(B, 3, 3)``,
``t_est, t_gt`` are ``(B, 3)`` in metres, ``pts`` are the object's model points ``(P, 3)`` in metres.
Errors are returned as ``(B,)`` tensors in metres (3D metrics) or pixels (2D metrics).

Which poses count as correct (thresholds, failed estimates) is decided in one place,
``pose6d_ros.evaluation.evaluate.score_poses``.

Example:
    >>> e = add(R, t, R_gt, t_gt, pts)                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pose6d_ros._checks import check_same_batch, check_shape
from pose6d_ros.geometry.keypoints import project_camera_points, project_points, transform_points

#: Pose pairs x symmetries x model points processed per chunk by MSSD / MSPD.
_ADI_CHUNK = 2 ** 22


def _check(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, pts: Tensor) -> None:
    check_shape(R_est, ("B", 3, 3), "R_est")
    check_shape(t_est, ("B", 3), "t_est")
    check_shape(R_gt, ("B", 3, 3), "R_gt")
    check_shape(t_gt, ("B", 3), "t_gt")
    check_shape(pts, ("P", 3), "pts")
    check_same_batch(("R_est", R_est), ("t_est", t_est), ("R_gt", R_gt), ("t_gt", t_gt))


def add(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, pts: Tensor) -> Tensor:
    """ADD (Hinterstoisser et al.): mean distance between corresponding transformed model points."""
    _check(R_est, t_est, R_gt, t_gt, pts)
    return (transform_points(pts, R_est, t_est) - transform_points(pts, R_gt, t_gt)).norm(dim=-1).mean(dim=-1)


def adi(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, pts: Tensor,
        query: Optional[Tensor] = None) -> Tensor:
    """ADD-S / ADI: mean distance from each GT-transformed point to the NEAREST estimate-transformed point.

    Args:
        pts: ``(P, 3)`` model points: the nearest neighbour is searched among ALL of them (a KD-tree).
        query: ``(Q, 3)`` the model points whose distances are averaged (default ``pts``), e.g. a
            subsample that bounds the cost. Only this side may be subsampled: searching a subsample
            lengthens every nearest-neighbour distance and biases recall down.

    The search runs in the estimate's model frame, ``R_est^T (R_gt q + t_gt - t_est)`` against the
    raw model points, so one tree serves every pose; a row whose ``R_est`` is not a rotation is
    searched as bop_toolkit does (a tree over its transformed points). Non-finite poses give ``inf``.
    Returns ``(B,)`` in the dtype and on the device of ``R_est``.
    """
    from scipy.spatial import cKDTree

    _check(R_est, t_est, R_gt, t_gt, pts)
    q = pts if query is None else query
    check_shape(q, ("Q", 3), "query")
    B = R_est.shape[0]
    if B == 0:
        return R_est.new_zeros(0)
    Re, te_, Rg, tg = (x.detach().cpu().double().numpy() for x in (R_est, t_est, R_gt, t_gt))
    P = pts.detach().cpu().double().numpy()
    Q = q.detach().cpu().double().numpy()
    gt = Q[None] @ Rg.transpose(0, 2, 1) + tg[:, None, :]  # (B, Q, 3) camera frame
    local = (gt - te_[:, None, :]) @ Re  # (B, Q, 3): R_est^T (x - t_est), rows as vectors
    finite = np.isfinite(local).all(axis=(1, 2))
    ortho = np.abs(Re.transpose(0, 2, 1) @ Re - np.eye(3)).max(axis=(1, 2)) < 1e-6
    out = np.full(B, np.inf)
    rows = np.flatnonzero(finite & ortho)
    if len(rows):
        dist, _ = cKDTree(P).query(local[rows].reshape(-1, 3), k=1)
        out[rows] = dist.reshape(len(rows), -1).mean(axis=1)
    for b in np.flatnonzero(finite & ~ortho):  # not a rotation: no shared tree (rare)
        dist, _ = cKDTree(P @ Re[b].T + te_[b]).query(gt[b], k=1)
        out[b] = dist.mean()
    return torch.from_numpy(out).to(dtype=R_est.dtype, device=R_est.device)


def re(R_est: Tensor, R_gt: Tensor) -> Tensor:
    """Rotation error in degrees: the angle of ``R_est @ R_gt^T``."""
    check_shape(R_est, ("B", 3, 3), "R_est")
    check_shape(R_gt, ("B", 3, 3), "R_gt")
    cos = ((R_est @ R_gt.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def te(t_est: Tensor, t_gt: Tensor) -> Tensor:
    """Translation error (Euclidean), metres."""
    check_shape(t_est, ("B", 3), "t_est")
    check_shape(t_gt, ("B", 3), "t_gt")
    return (t_est - t_gt).norm(dim=-1)


def proj_error(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, K: Tensor, pts: Tensor) -> Tensor:
    """2D projection error (Brachmann et al.): mean pixel distance of the projected model points."""
    _check(R_est, t_est, R_gt, t_gt, pts)
    check_shape(K, ("B", 3, 3), "K")
    return (project_points(pts, R_est, t_est, K) - project_points(pts, R_gt, t_gt, K)).norm(dim=-1).mean(-1)


def symmetry_transforms(symmetries_discrete: Union[np.ndarray, Sequence] = (), symmetries_continuous: Sequence = (),
                        max_sym_disc_step: float = 0.01) -> Tuple[np.ndarray, np.ndarray]:
    """All symmetry transformations of an object, as bop_toolkit's ``misc.get_symmetry_transformations``.

    Args:
        symmetries_discrete: ``(S, 4, 4)`` transforms, translation in metres.
        symmetries_continuous: items with ``axis`` and ``offset`` (metres), e.g. registry
            ``ContinuousSymmetry`` records or dicts.
        max_sym_disc_step: the largest distance (fraction of the diameter) the point farthest from
            the axis may move between two consecutive discretisation steps of a continuous symmetry.

    Returns:
        ``(R (T, 3, 3), t (T, 3))``, the identity first.
    """
    disc = [np.eye(4)] + [np.asarray(T, np.float64).reshape(4, 4) for T in symmetries_discrete]
    cont = [np.eye(4)]
    for sym in symmetries_continuous:
        axis = np.asarray(sym["axis"] if isinstance(sym, dict) else sym.axis, np.float64)
        offset = np.asarray(sym["offset"] if isinstance(sym, dict) else sym.offset, np.float64)
        axis = axis / np.linalg.norm(axis)
        n = int(math.ceil(math.pi / max_sym_disc_step))  # bop_toolkit's discretisation
        for i in range(1, n):
            angle = 2 * math.pi * i / n
            K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            R = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, -R @ offset + offset
            cont.append(T)
    combos = np.stack([Tc @ Td for Td in disc for Tc in cont])
    return combos[:, :3, :3], combos[:, :3, 3]


def _with_symmetries(R_gt: Tensor, t_gt: Tensor, sym_R: Tensor, sym_t: Tensor) -> Tuple[Tensor, Tensor]:
    """GT poses composed with each symmetry: ``(B, T, 3, 3), (B, T, 3)``; ``x = R_gt (S_R x + S_t) + t_gt``."""
    R = R_gt[:, None] @ sym_R[None]
    t = (R_gt[:, None] @ sym_t[None, :, :, None])[..., 0] + t_gt[:, None]
    return R, t


def _sym_tensors(symmetries, like: Tensor) -> Tuple[Tensor, Tensor]:
    if symmetries is None:
        return torch.eye(3, dtype=like.dtype, device=like.device)[None], like.new_zeros(1, 3)
    R, t = symmetries
    return torch.as_tensor(R, dtype=like.dtype, device=like.device), torch.as_tensor(t, dtype=like.dtype, device=like.device)


def mssd(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, pts: Tensor, syms=None) -> Tensor:
    """MSSD (BOP): min over symmetries of the MAX distance of corresponding points.

    ``syms`` is ``symmetry_transforms(...)``'s ``(R, t)``; ``None`` means no symmetry.
    """
    _check(R_est, t_est, R_gt, t_gt, pts)
    sR, st = _sym_tensors(syms, pts)
    return _chunked(lambda i, j: _mssd(R_est[i:j], t_est[i:j], R_gt[i:j], t_gt[i:j], pts, sR, st),
                    R_est.shape[0], sR.shape[0] * pts.shape[0], R_est)


def _chunked(fn, B: int, per_item: int, like: Tensor) -> Tensor:
    step = max(1, _ADI_CHUNK // max(1, per_item))
    out = [fn(i, min(B, i + step)) for i in range(0, B, step)]
    return torch.cat(out) if out else like.new_zeros(0)


def _mssd(R_est, t_est, R_gt, t_gt, pts, sR, st) -> Tensor:
    Rg, tg = _with_symmetries(R_gt, t_gt, sR, st)  # (B, T, ...)
    est = transform_points(pts, R_est, t_est)[:, None]  # (B, 1, P, 3)
    gt = pts @ Rg.transpose(-1, -2) + tg[:, :, None, :]  # (B, T, P, 3)
    return (est - gt).norm(dim=-1).max(dim=-1).values.min(dim=-1).values


def mspd(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor, K: Tensor, pts: Tensor, syms=None) -> Tensor:
    """MSPD (BOP): min over symmetries of the MAX pixel distance of corresponding projected points."""
    _check(R_est, t_est, R_gt, t_gt, pts)
    check_shape(K, ("B", 3, 3), "K")
    sR, st = _sym_tensors(syms, pts)
    return _chunked(lambda i, j: _mspd(R_est[i:j], t_est[i:j], R_gt[i:j], t_gt[i:j], K[i:j], pts, sR, st),
                    R_est.shape[0], sR.shape[0] * pts.shape[0], R_est)


def _mspd(R_est, t_est, R_gt, t_gt, K, pts, sR, st) -> Tensor:
    Rg, tg = _with_symmetries(R_gt, t_gt, sR, st)
    T = Rg.shape[1]
    uv_est = project_points(pts, R_est, t_est, K)[:, None]  # (B, 1, P, 2)
    gt_cam = pts @ Rg.transpose(-1, -2) + tg[:, :, None, :]  # (B, T, P, 3)
    uv_gt = project_camera_points(gt_cam.flatten(1, 2), K).unflatten(1, (T, pts.shape[0]))
    return (uv_est - uv_gt).norm(dim=-1).max(dim=-1).values.min(dim=-1).values
