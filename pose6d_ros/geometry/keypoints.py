"""Box keypoints of an object, rigid transforms and the pinhole projection (order and pixel
convention fixed by ``docs/conventions.md``)."""

from __future__ import annotations

import torch

from pose6d_ros._checks import check_shape, check_same_batch


def box_keypoints(vertices: torch.Tensor, with_centroid: bool = True) -> torch.Tensor:
    """Corners (and centre) of the tight axis-aligned model-frame box around ``vertices``.

    Corner order is ``itertools.product((xmin, xmax), (ymin, ymax), (zmin, zmax))``, i.e. corner
    ``i = 4*ix + 2*iy + iz``; the box centre (not the vertex mean) comes last when
    ``with_centroid``.

    Args:
        vertices: ``(V, 3)`` or ``(B, V, 3)`` model points.
        with_centroid: append the box centre.

    Returns:
        ``(9, 3)`` / ``(8, 3)``, or ``(B, 9, 3)`` / ``(B, 8, 3)`` for batched input.

    Example:
        >>> box_keypoints(torch.tensor([[0., 0, 0], [1, 2, 3]]))[[0, 7, 8]]
        tensor([[0.0000, 0.0000, 0.0000],
                [1.0000, 2.0000, 3.0000],
                [0.5000, 1.0000, 1.5000]])
    """
    check_shape(vertices, ("...", "V", 3), "vertices")
    if vertices.dim() not in (2, 3):
        raise ValueError(f"vertices: expected shape (V, 3) or (B, V, 3), got {tuple(vertices.shape)}")
    lo = vertices.amin(dim=-2)
    hi = vertices.amax(dim=-2)
    bits = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)],
                        dtype=torch.bool, device=vertices.device)
    corners = torch.where(bits, hi.unsqueeze(-2), lo.unsqueeze(-2))
    if with_centroid:
        corners = torch.cat((corners, ((lo + hi) / 2).unsqueeze(-2)), dim=-2)
    return corners


def transform_points(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Model -> camera frame: ``x_cam = R @ x + t``.

    Args:
        points: ``(B, N, 3)`` or ``(N, 3)`` (shared by the batch) model points.
        R: ``(B, 3, 3)`` rotations (model to camera).
        t: ``(B, 3)`` translations.

    Returns:
        ``(B, N, 3)`` camera-frame points.
    """
    check_shape(R, ("B", 3, 3), "R")
    check_shape(t, ("B", 3), "t")
    check_same_batch(("R", R), ("t", t))
    if points.dim() == 2:
        check_shape(points, ("N", 3), "points")
        return points @ R.transpose(-1, -2) + t[:, None, :]
    check_shape(points, ("B", "N", 3), "points")
    check_same_batch(("points", points), ("R", R))
    return points @ R.transpose(-1, -2) + t[:, None, :]


def project_camera_points(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points (OpenCV pixel convention): the package's one
    projection formula (model points: :func:`project_points`; the rasterizer and the metrics call it).

    ``u = fx * X/Z + s * Y/Z + cx``, ``v = fy * Y/Z + cy`` (``s = K[0, 1]``, the skew). No guard
    against ``Z <= 0``: points behind the camera give meaningless (possibly infinite) pixels.

    Args:
        points: ``(B, N, 3)`` camera-frame points.
        K: ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(B, N, 2)`` pixel coordinates.
    """
    check_shape(points, ("B", "N", 3), "points")
    check_shape(K, ("B", 3, 3), "K")
    check_same_batch(("points", points), ("K", K))
    xy = points[..., :2] / points[..., 2:3]
    return xy @ K[:, :2, :2].transpose(-1, -2) + K[:, None, :2, 2]


def project_points(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                   K: torch.Tensor) -> torch.Tensor:
    """Project model points to pixels with a pinhole camera (OpenCV pixel convention).

    :func:`project_camera_points` of ``[X, Y, Z] = R @ x + t``. No guard against ``Z <= 0``: points
    behind the camera give meaningless (possibly infinite) pixels.

    Args:
        points: ``(B, N, 3)`` or ``(N, 3)`` model points.
        R: ``(B, 3, 3)`` rotations.
        t: ``(B, 3)`` translations.
        K: ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(B, N, 2)`` pixel coordinates.

    Example:
        >>> K = torch.tensor([[[500., 0, 320], [0, 500, 240], [0, 0, 1]]])
        >>> project_points(torch.tensor([[0.1, 0, 0]]), torch.eye(3)[None], torch.tensor([[0., 0, 1]]), K)
        tensor([[[370., 240.]]])
    """
    return project_camera_points(transform_points(points, R, t), K)


__all__ = ["box_keypoints", "transform_points", "project_points"]
