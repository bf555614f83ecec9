"""Batched triangle rasterizer in pure PyTorch: hard z-buffer + soft contour band.

Cost grows with the pixels the meshes cover, not with pixels x faces:

1. Every face is split into the pixel rows its screen bounding box spans, and every (face, row) pair
   into the pixel centres the triangle covers on that row (an exact span, from the row's
   intersections with the three edges).  Both splits are prefix-sum expansions, so the result is a
   flat list of (pixel, face) candidates holding only covered pixels.
2. Inverse depth is affine in screen coordinates on a triangle, so each candidate's ``1/z`` costs
   one multiply-add; a ``scatter_reduce(amax)`` is the z-buffer.
3. Only the winning face of each covered pixel is then recomputed with autograd (perspective-correct
   barycentrics), so the backward pass touches covered pixels once.
4. The soft silhouette needs distances only near the outline: contour edges (mesh edges whose two
   faces lie on the same side of them in the image, or border edges) are expanded into the pixels of
   their bounding box grown by the soft margin, and each pixel of that band takes its signed
   distance to the nearest outline edge (positive inside).  The selection runs without autograd;
   the distance to the winning edge is recomputed with it.

Pixel ``(i, j)`` is sampled at ``(u, v) = (j, i)`` (OpenCV, docs/conventions.md).

On the CPU the cost is mostly memory traffic, so the large per-row and per-candidate temporaries are
updated in place and released as soon as a stage is done: every megabyte of peak memory above what
the allocator keeps is returned to the OS after a call and page-faulted back in by the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from pose6d_ros.geometry.keypoints import project_camera_points

__all__ = ["Fragments", "ContourFragments", "project", "rasterize_faces", "rasterize_contours"]


@dataclass(frozen=True)
class Fragments:
    """The hard z-buffer, compactly: one entry per covered pixel.

    Attributes:
        pix: ``(N,)`` flat pixel index ``b * H * W + i * W + j`` of each covered pixel.
        face: ``(N,)`` winning face index within its mesh (``0..Fmax-1``).
        bary: ``(N, 3)`` perspective-correct barycentric coordinates (differentiable; a transposed
            view of a ``(3, N)`` tensor).
        zbuf: ``(N,)`` depth in metres (differentiable).
        size: ``(B, H, W)``.
    """

    pix: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor
    size: Tuple[int, int, int]

    def covered(self) -> torch.Tensor:
        """``(B, H, W)`` bool mask of covered pixels."""
        b, h, w = self.size
        m = torch.zeros(b * h * w, dtype=torch.bool, device=self.pix.device)
        m[self.pix] = True
        return m.view(b, h, w)

    def pix_to_face(self) -> torch.Tensor:
        """``(B, H, W)`` winning face per pixel, ``-1`` where empty (pytorch3d's convention)."""
        b, h, w = self.size
        out = torch.full((b * h * w,), -1, dtype=torch.int64, device=self.pix.device)
        out[self.pix] = self.face
        return out.view(b, h, w)


@dataclass(frozen=True)
class ContourFragments:
    """Pixels within the soft margin of the outline, with their distance to it.

    Attributes:
        pix: ``(M,)`` flat pixel index.
        signed_dist: ``(M,)`` signed distance in pixels to the nearest outline edge, positive inside
            the hard silhouette (differentiable).
        edge: ``(M,)`` that edge's index within its mesh's edge list.
        s: ``(M,)`` position of the nearest point along the edge, 0 at ``edges[:, 0]``, 1 at the other end.
    """

    pix: torch.Tensor
    signed_dist: torch.Tensor
    edge: torch.Tensor
    s: torch.Tensor


def project(points: torch.Tensor, K: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection with OpenCV intrinsics (:func:`~pose6d_ros.geometry.keypoints.project_camera_points`),
    depths near zero clamped to ``1e-12``.

    Args:
        points: ``(B, N, 3)`` camera-frame points.
        K: ``(B, 3, 3)``.

    Returns:
        ``(B, N, 2)`` pixel coordinates ``(u, v)`` and ``(B, N)`` depths ``z``.
    """
    z = points[..., 2]
    zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))  # a vertex on the camera plane: finite
    return project_camera_points(torch.cat((points[..., :2], zs[..., None]), dim=-1), K), z


def _expand(counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ``counts (N,)`` return ``owner (T,)`` and ``local (T,)``: item ``n`` repeated ``counts[n]``
    times and ``0..counts[n]-1`` for each, ``T = counts.sum()`` (both of ``counts``' dtype, or int64
    when ``T`` does not fit it: the total counts candidates, not pixels, so it can exceed int32).

    ``owner`` is a prefix sum of item starts rather than ``repeat_interleave``, which is several
    times slower on the CPU: the start of every item but the first is marked once per item
    beginning there (empty items share their successor's start), so the running count of marks is
    the owner.
    """
    dev = counts.device
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    total = int(ends[-1]) if counts.numel() else 0
    dt = counts.dtype if total < torch.iinfo(counts.dtype).max else torch.int64
    ends, counts = ends.to(dt), counts.to(dt)
    starts = ends - counts
    marks = torch.zeros(total + 1, dtype=dt, device=dev)
    marks.index_add_(0, starts[1:], torch.ones(1, dtype=dt, device=dev).expand(max(starts.shape[0] - 1, 0)))
    owner = torch.cumsum(marks[:total], 0, dtype=dt)
    local = torch.arange(total, dtype=dt, device=dev) - starts.index_select(0, owner)
    return owner, local


def _index_dtype(n: int) -> torch.dtype:
    """int32 for flat indices below ``n`` when they fit (int32 arithmetic is about twice as fast)."""
    return torch.int32 if n < 2**31 else torch.int64


def _take(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # 1-D index_select is several times faster on the CPU than gathering rows of a 2-D tensor.
    return table.index_select(0, idx)



def _winner_rows(best: torch.Tensor, sel: torch.Tensor, y: torch.Tensor, row_base: torch.Tensor,
                 dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the flat pixels ``sel``: the winning (face or edge, row) entry packed in ``best``'s low bits,
    and the pixel's coordinates read off that row (integer-valued, so exact in any float dtype)."""
    row = _take(best, sel) & _LOW
    return row, _take(y, row).to(dtype), (sel - _take(row_base, row)).to(dtype)


def _keys(value: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    """int64 keys ``(float32 bits of value) << 32 | payload`` for ``value >= 0``, ``0 <= payload < 2**32``.

    The bits of a non-negative float32 order like the float, so a ``scatter_reduce`` of the keys is
    the z-test (or nearest-edge test) and the choice of the winner in one pass, with no boolean
    compaction.  Ties go to the largest (``amax``) or smallest (``amin``) payload.
    """
    key = value.to(torch.float32).view(torch.int32).to(torch.int64)
    key <<= 32
    key |= payload
    return key


def _hi(x: float) -> int:
    """The key prefix of a non-negative float: every key of a value ``>= x`` is ``>= _hi(x)``."""
    return int(torch.tensor(x, dtype=torch.float32).view(torch.int32)) << 32


_LOW = 0xFFFFFFFF


@dataclass(frozen=True)
class _FaceExtras:
    """What the shaders need from the face pass besides :class:`Fragments`.

    Attributes:
        covered: ``(B * H * W,)`` bool hard coverage.
        scratch: a free ``(B * H * W,)`` int64 buffer (the z-buffer's), for the contour pass.
        fv: three ``(N,)`` flat (batch-offset) vertex ids of each covered pixel's face.
        bary: three contiguous ``(N,)`` columns of ``Fragments.bary``.
        batch: ``(N,)`` batch index of each covered pixel.
    """

    covered: torch.Tensor
    scratch: torch.Tensor
    fv: List[torch.Tensor]
    bary: List[torch.Tensor]
    batch: torch.Tensor


def _rasterize_faces(
    uv: torch.Tensor,
    z: torch.Tensor,
    faces: torch.Tensor,
    face_valid: torch.Tensor,
    size: Tuple[int, int],
    znear: float = 1e-3,
    cull: Optional[torch.Tensor] = None,
) -> Tuple[Fragments, _FaceExtras]:
    """:func:`rasterize_faces`, plus :class:`_FaceExtras` for the shaders.

    ``cull (B,)``: drop the faces whose screen-space signed area has this item's sign (0: keep
    all); the caller passes the back-face sign for closed meshes seen from outside.
    """
    B, V = uv.shape[:2]
    F = faces.shape[1]
    H, W = size
    HW = H * W
    dev = uv.device
    it = _index_dtype(3 * B * HW)  # flat pixel indices, planar RGB ones included
    vt = _index_dtype(B * V)
    fidx = (faces.to(vt) + (torch.arange(B, device=dev, dtype=vt) * V)[:, None, None]).reshape(-1, 3)
    BF = fidx.shape[0]
    corners = torch.cat([fidx[:, k] for k in range(3)])  # (3 * BF,): corner k of face f at k * BF + f
    fcol = list(corners.view(3, BF))  # (BF,) flat vertex ids of each corner
    # The selection runs in inference mode (no autograd bookkeeping: ~5-10% of the forward on the
    # CPU, where most ops are small); only tensors autograd never saves leave these blocks, and
    # the pixel lists that it may save (as scatter indices) are made outside them.
    with torch.inference_mode():
        # Per-face quantities are (3, BF) tables, row k for corner or edge k: one op per formula
        # (at ~15k faces the cost is mostly per-op overhead).
        X = uv.detach()[..., 0].reshape(-1).float().index_select(0, corners).view(3, BF)
        Y = uv.detach()[..., 1].reshape(-1).float().index_select(0, corners).view(3, BF)
        Z = z.detach().reshape(-1).float().index_select(0, corners).view(3, BF)
        (x0, x1, x2), (y0, y1, y2) = X, Y
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)  # twice the signed area
        # sign(0) = 0 only zeroes faces that `ok` drops anyway.
        sgn = torch.sign(area)
        # Edge functions e_k(x, y) = A_k x + B_k y + C_k, oriented so the inside is positive; edge k
        # joins corners k + 1 and k + 2.  Kept: A, -B and -C (negation is exact).
        X1, X2, Y1, Y2 = X.roll(-1, 0), X.roll(-2, 0), Y.roll(-1, 0), Y.roll(-2, 0)
        A = sgn * (Y1 - Y2)
        nB = sgn * (X1 - X2)
        nC = sgn * (X2 * Y1 - X1 * Y2)
        del X1, X2, Y1, Y2
        ymin = torch.ceil(Y.amin(0)).clamp_(min=0)
        ymax = torch.floor(Y.amax(0)).clamp_(max=H - 1)
        ok = face_valid.reshape(-1) & (Z.amin(0) > znear) & (area.abs() > 1e-9)
        ok &= X.amax(0) >= 0
        ok &= X.amin(0) <= W - 1
        face_b = torch.arange(B, device=dev, dtype=it).repeat_interleave(F)
        if cull is not None:
            ok &= area * _take(cull.detach().float(), face_b) <= 0
        rows = (ymax - ymin + 1).clamp_(min=0).mul_(ok).to(it)
        # Inverse depth is affine over the triangle: 1/z = pa * x + pb * y + pc.
        ia = 1.0 / (sgn * area).clamp(min=1e-12)
        nia = -ia
        pa, pb, pc = ((q[0] + q[1] + q[2]) * f for q, f in ((A / Z, ia), (nB / Z, nia), (nC / Z, nia)))

        face_row0 = face_b * HW + ymin.to(it) * W
        # Row span: e_k >= 0 <=> x >= bound_k (A_k > 0) or x <= bound_k (A_k < 0), with bound_k =
        # -(B_k y + C_k) / A_k (a horizontal edge, A_k = 0, holds on every row of the face).  Each
        # edge's bound is offset by 0 on the side it limits and by >= 5e29 on the other, so a row
        # takes a plain max / min over the three edges (torch.where is ~20x slower than arithmetic
        # on the CPU).

        # (face, row) pairs.
        gface, r = _expand(rows)
        n_rows = gface.shape[0]
        y = _take(ymin, gface).add_(r.float())
        g3 = (gface[None, :] + (torch.arange(3, device=dev, dtype=gface.dtype) * BF)[:, None]).view(-1)

        def per_row(table: torch.Tensor) -> torch.Tensor:  # (3, R) rows of a (3, BF) table
            return _take(table.view(-1), g3).view(3, n_rows)

        a = per_row(A)
        sa = torch.sign(a)
        bound = per_row(nB).mul_(y).add_(per_row(nC)).div_(a.add_(1.0 - sa.abs())).clamp_(-1e20, 1e20)  # A, or 1
        lo3 = (sa - 1.0).mul_(5e29).add_(bound)
        hi3 = bound.add_(sa.add_(1.0).mul_(5e29))
        del a, sa
        del bound, g3
        lo = torch.maximum(torch.maximum(lo3[0], lo3[1]), lo3[2])
        hi = torch.minimum(torch.minimum(hi3[0], hi3[1]), hi3[2])
        del lo3, hi3
        xl = lo.clamp_(min=0.0).ceil_().clamp_(max=float(W))  # W: an empty row, kept in int range
        cols = hi.clamp_(max=float(W - 1)).floor_().sub_(xl).add_(1).clamp_(min=0).to(it)
        del hi
        row_pa = _take(pa, gface)
        row_i0 = row_pa * xl
        row_i0 += _take(pb, gface).mul_(y)
        row_i0 += _take(pc, gface)
        row_base = _take(face_row0, gface).add_(r.mul_(W))  # flat index of the row's pixel 0
        row_pix = row_base + xl.to(it)
        del r, xl

        # (pixel, face) candidates and the z-buffer.  The key's payload is the candidate's row: rows
        # follow face order and a pixel meets a row at most once, so the largest row is the largest
        # face, as a tie-break on equal depth should be (deterministic, batch independent).
        row_id, c = _expand(cols)
        pix = _take(row_pix, row_id).add_(c)
        invz = torch.addcmul(_take(row_i0, row_id), _take(row_pa, row_id), c.float())
        del c, row_i0, row_pa, row_pix
        key = _keys(invz.clamp_(min=0), row_id)
        del invz, row_id
        best = torch.full((B * HW,), -1, dtype=torch.int64, device=dev)
        best.scatter_reduce_(0, pix, key, reduce="amax", include_self=True)
        del pix, key
        covered = best >= 0
    cov_pix = torch.nonzero(covered).squeeze(1)
    with torch.inference_mode():
        win, qy, qx = _winner_rows(best, cov_pix, y, row_base, uv.dtype)
        cov_face = _take(gface, win)  # global face id b * F + f
        cov_b = _take(face_b, cov_face)
        del win, y, row_base, gface

    # Differentiable recomputation for the winners only.
    fv = [_take(fcol[k], cov_face) for k in range(3)]  # flat vertex ids
    uf = uv[..., 0].reshape(-1)
    vf = uv[..., 1].reshape(-1)
    zl = z.reshape(-1)
    u0, u1, u2 = (_take(uf, fv[k]) - qx for k in range(3))
    v0, v1, v2 = (_take(vf, fv[k]) - qy for k in range(3))
    w0 = u1 * v2 - u2 * v1
    w1 = u2 * v0 - u0 * v2
    w2 = u0 * v1 - u1 * v0
    wsum = w0 + w1 + w2
    p0 = w0 / (wsum * _take(zl, fv[0]))
    p1 = w1 / (wsum * _take(zl, fv[1]))
    p2 = w2 / (wsum * _take(zl, fv[2]))
    invz_d = p0 + p1 + p2
    bcols = [p0 / invz_d, p1 / invz_d, p2 / invz_d]
    # bary as the transpose of a (3, N) stack: interleaving three columns into (N, 3) is ~10x slower.
    frags = Fragments(
        pix=cov_pix, face=(cov_face - cov_b * F).long(), bary=torch.stack(bcols).t(), zbuf=1.0 / invz_d, size=(B, H, W)
    )
    return frags, _FaceExtras(covered=covered, scratch=best, fv=fv, bary=bcols, batch=cov_b)


def rasterize_faces(
    uv: torch.Tensor,
    z: torch.Tensor,
    faces: torch.Tensor,
    face_valid: torch.Tensor,
    size: Tuple[int, int],
    znear: float = 1e-3,
) -> Fragments:
    """Hard, z-buffered rasterization of a batch of meshes.

    A pixel centre is covered when it lies inside or on the triangle (edge functions >= 0).

    Args:
        uv: ``(B, V, 2)`` projected vertices (pixels).
        z: ``(B, V)`` vertex depths (metres).
        faces: ``(B, F, 3)`` vertex indices.
        face_valid: ``(B, F)`` bool; faces with a vertex nearer than ``znear`` are dropped too.
        size: ``(H, W)``.

    Returns:
        :class:`Fragments` (barycentrics and depth keep the autograd graph of ``uv`` and ``z``).
    """
    return _rasterize_faces(uv, z, faces, face_valid, size, znear)[0]


@dataclass(frozen=True)
class _ContourExtras:
    """What the shaders need from the contour pass besides :class:`ContourFragments`.

    Attributes:
        inside: ``(M,)`` bool, band pixel covered.
        ev: two ``(M,)`` flat (batch-offset) vertex ids of each band pixel's edge.
        batch: ``(M,)`` batch index of each band pixel.
    """

    inside: torch.Tensor
    ev: List[torch.Tensor]
    batch: torch.Tensor


def _rasterize_contours(
    uv: torch.Tensor,
    z: torch.Tensor,
    edges: torch.Tensor,
    edge_opposite: torch.Tensor,
    edge_valid: torch.Tensor,
    covered: torch.Tensor,
    size: Tuple[int, int],
    margin: float,
    znear: float,
    scratch: Optional[torch.Tensor] = None,
) -> Tuple[ContourFragments, _ContourExtras]:
    """:func:`rasterize_contours` on a flat ``(B * H * W,)`` coverage, plus :class:`_ContourExtras`;
    ``scratch`` is an optional free ``(B * H * W,)`` int64 buffer to use as the distance buffer."""
    B, V = uv.shape[:2]
    E = edges.shape[1]
    H, W = size
    HW = H * W
    P = B * HW
    dev = uv.device
    it = _index_dtype(P + 1)
    vt = _index_dtype(B * V)
    off = (torch.arange(B, device=dev, dtype=vt) * V)[:, None, None]
    ev = (edges.to(vt) + off).reshape(-1, 2)  # (BE, 2) flat vertex ids
    ov = (edge_opposite.clamp(min=0).to(vt) + off).reshape(-1, 2)
    BE = ev.shape[0]
    # (4 * BE,): both ends, then both opposite vertices, of every edge.
    ends = torch.cat([ev[:, 0], ev[:, 1], ov[:, 0], ov[:, 1]])
    ev0, ev1 = ends[:BE], ends[BE : 2 * BE]
    m = float(margin)
    with torch.inference_mode():  # see _rasterize_faces
        U = uv.detach()[..., 0].reshape(-1).float().index_select(0, ends).view(4, BE)
        Vt = uv.detach()[..., 1].reshape(-1).float().index_select(0, ends).view(4, BE)
        Zmin = z.detach().reshape(-1).float().index_select(0, ends[: 2 * BE]).view(2, BE).amin(0)
        (ax, bx), (ay, by) = U[:2], Vt[:2]
        ex, ey = bx - ax, by - ay
        side = ex * (Vt[2:] - ay) - ey * (U[2:] - ax)  # (2, BE): where each opposite vertex lies
        del U, Vt
        ymin_e, ymax_e = torch.minimum(ay, by), torch.maximum(ay, by)
        y_lo = torch.ceil(ymin_e - m).clamp_(min=0)
        y_hi = torch.floor(ymax_e + m).clamp_(max=H - 1)
        contour = (side[0] * side[1] >= 0) | (edge_opposite[..., 1].reshape(-1) < 0)  # or a border edge
        contour &= edge_valid.reshape(-1)
        contour &= Zmin > znear
        contour &= torch.maximum(ax, bx) + m >= 0
        contour &= torch.minimum(ax, bx) - m <= W - 1
        rows = (y_hi - y_lo + 1).clamp_(min=0).mul_(contour).to(it)
        del side, Zmin, contour
        edge_b = torch.arange(B, device=dev, dtype=it).repeat_interleave(E)
        # Per edge, so that rows only gather: x = ax + (y - ay) * slope along the segment, and for
        # a horizontal edge (slope 0 here) the x extent of the whole segment (a 0/1 factor, not a
        # where: ~5x cheaper on the CPU).
        flat = (ey == 0).to(ey.dtype)
        sloped = 1.0 - flat
        slope = (ex / (ey + flat)).mul_(sloped)
        flat_lo = torch.minimum(ax, ax + ex).add_(sloped * 1e30)
        flat_hi = torch.maximum(ax, ax + ex).sub_(sloped * 1e30)
        inv_ee = 1.0 / (ex * ex + ey * ey).clamp(min=1e-12)

        # (edge, row) pairs: the row's pixels within m of the segment lie within m (in x) of the
        # part of the segment whose y is within m of the row.
        ge, r = _expand(rows)
        y = _take(y_lo, ge) + r.float()
        gax, gay, gslope = _take(ax, ge), _take(ay, ge), _take(slope, ge)
        yl = torch.maximum(y - m, _take(ymin_e, ge))
        yh = torch.minimum(y + m, _take(ymax_e, ge))
        xa = gax + (yl - gay) * gslope
        xb = gax + (yh - gay) * gslope
        x_min = torch.minimum(torch.minimum(xa, xb), _take(flat_lo, ge))
        x_max = torch.maximum(torch.maximum(xa, xb), _take(flat_hi, ge))
        xl = torch.ceil(x_min - m).clamp_(0.0, float(W))  # W: an empty row, kept in int range
        xr = torch.floor(x_max + m).clamp_(max=W - 1)
        cols = (xr - xl + 1).clamp_(min=0).to(it)
        row_dy = y - gay
        row_dx0 = xl - gax
        row_base = _take(edge_b, ge) * HW + y.to(it) * W  # flat index of the row's pixel 0
        row_pix = row_base + xl.to(it)
        del yl, yh, xa, xb, x_min, x_max, xr
        # An edge with no uncovered pixel in its band can win no uncovered pixel, so is no outline
        # edge and loses both passes everywhere: drop it before expanding (interior folds are
        # most of the contour edges).  A prefix sum of covered pixels counts a row's span.
        if scratch is None or scratch.numel() < max(P, 1):
            scratch = torch.empty(max(P, 1), dtype=torch.int64, device=dev)
        # Covered pixels before flat pixel p, in the scratch buffer's memory (fresh pages cost a
        # page fault each).
        before = scratch.view(torch.int32)[: P + 1]
        before[0] = 0
        torch.cumsum(covered, 0, dtype=torch.int32, out=before[1:])
        p_lo = row_pix.clamp(max=P)  # an empty row may start past the end; its span stays empty
        n_cov = _take(before, (row_pix + cols).clamp_(max=P)).sub_(_take(before, p_lo))
        del before, p_lo
        seen = (cols - n_cov) > 0
        edge_seen = torch.zeros(B * E, dtype=torch.int32, device=dev)
        edge_seen.scatter_reduce_(0, ge, seen.to(torch.int32), reduce="amax")
        cols.mul_(_take(edge_seen, ge).to(it))
        del n_cov, seen, edge_seen

        # (pixel, edge) candidates: squared distance to the segment.
        row_id, c = _expand(cols)
        pix = _take(row_pix, row_id).add_(c)
        dx = _take(row_dx0, row_id).add_(c.float())
        del c
        dy = _take(row_dy, row_id)
        cex, cey = _take(_take(ex, ge), row_id), _take(_take(ey, ge), row_id)
        sp = dx * cex
        sp += dy * cey
        sp.mul_(_take(_take(inv_ee, ge), row_id)).clamp_(0.0, 1.0)
        d2 = dx.sub_(cex.mul_(sp)).square_()
        d2 += dy.sub_(cey.mul_(sp)).square_()
        del dx, dy, cex, cey, sp
        cov = _take(covered, pix).to(torch.int64)
        # Keys >= far are candidates at distance >= m, or ones a pass must ignore (OR-ing far into
        # a key makes it >= far); the payload is the candidate's row (rows follow edge order, a
        # pixel meets a row at most once), so ties go to the first edge.  Pass 1 (uncovered
        # pixels): nearest contour edge.  Pass 2 (covered pixels): nearest outline edge, i.e. one
        # that won pass 1 somewhere.  Both passes share one buffer: pass 1 leaves only ignorable
        # keys on covered pixels, pass 2 only on uncovered ones.
        far = _hi(m * m)
        key = _keys(d2, row_id)
        del d2
        key_out = cov * far
        key_out |= key
        best = scratch[:P]
        best.fill_(torch.iinfo(torch.int64).max)
        best.scatter_reduce_(0, pix, key_out, reduce="amin", include_self=True)
        won = _take(best, pix) == key_out
        won &= key_out < far
        del key_out
        outer_row = torch.zeros(ge.shape[0], dtype=torch.int32, device=dev)
        outer_row.scatter_reduce_(0, row_id, won.to(torch.int32), reduce="amax")
        del won
        outer = torch.zeros(B * E, dtype=torch.int32, device=dev)
        outer.scatter_reduce_(0, ge, outer_row, reduce="amax")
        in_ok = cov.mul_(_take(_take(outer, ge), row_id))  # 1: a covered pixel and an outline edge
        del row_id
        key |= in_ok.neg_().add_(1).mul_(far)
        best.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
        del in_ok, key, pix
        band_mask = best < far
    band = torch.nonzero(band_mask).squeeze(1)
    with torch.inference_mode():
        brow, qy, qx = _winner_rows(best, band, y, row_base, uv.dtype)
        band_edge = _take(ge, brow)  # global edge id b * E + e
        inside = _take(covered, band)
        band_b = _take(edge_b, band_edge)

    be0, be1 = _take(ev0, band_edge), _take(ev1, band_edge)
    uf = uv[..., 0].reshape(-1)
    vf = uv[..., 1].reshape(-1)
    pax, pay = _take(uf, be0), _take(vf, be0)
    pex, pey = _take(uf, be1) - pax, _take(vf, be1) - pay
    dx, dy = qx - pax, qy - pay
    s = ((dx * pex + dy * pey) / (pex * pex + pey * pey).clamp(min=1e-12)).clamp(0.0, 1.0)
    rx, ry = dx - s * pex, dy - s * pey
    # eps keeps the gradient of sqrt finite when a pixel centre sits on the edge.
    dist = torch.sqrt(rx * rx + ry * ry + 1e-12)
    signed = dist * (inside.to(dist.dtype) * 2.0 - 1.0)  # +dist inside, -dist outside
    frags = ContourFragments(pix=band, signed_dist=signed, edge=(band_edge - band_b * E).long(), s=s)
    return frags, _ContourExtras(inside=inside, ev=[be0, be1], batch=band_b)


def rasterize_contours(
    uv: torch.Tensor,
    z: torch.Tensor,
    edges: torch.Tensor,
    edge_opposite: torch.Tensor,
    edge_valid: torch.Tensor,
    covered: torch.Tensor,
    margin: float,
    znear: float = 1e-3,
) -> ContourFragments:
    """Signed distance to the outline for the pixels within ``margin`` of it.

    An edge is a contour edge when its (up to) two faces project to the same side of it; the
    outline edges are the contour edges nearest to some uncovered pixel (interior contours, e.g. the
    fold of a duck's neck over its body, never are).  Uncovered pixels take the distance to the
    nearest contour edge; covered pixels the distance to the nearest outline edge.

    Args:
        uv: ``(B, V, 2)`` projected vertices.
        z: ``(B, V)`` depths.
        edges: ``(B, E, 2)`` vertex ids; ``edge_opposite (B, E, 2)`` third vertices (``-1``: border).
        edge_valid: ``(B, E)`` bool.
        covered: ``(B, H, W)`` bool hard coverage.
        margin: band half-width, pixels.

    Returns:
        :class:`ContourFragments`.
    """
    _, H, W = covered.shape
    return _rasterize_contours(
        uv, z, edges, edge_opposite, edge_valid, covered.reshape(-1), (H, W), margin, znear
    )[0]
