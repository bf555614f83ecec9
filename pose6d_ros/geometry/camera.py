"""Pinhole camera with ROS/OpenCV lens distortion, and the crop-window intrinsics.

Pixel and crop conventions are those of ``docs/conventions.md``: pixel centres at integer
coordinates, a crop box ``(x0, y0, x1, y1)`` in continuous image coordinates (edges), and network
keypoints in normalised crop coordinates (``grid_sample(align_corners=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pose6d_ros._checks import check_shape, check_same_batch

Size = Union[int, Tuple[int, int], Sequence[int]]

# Number of coefficients each ROS distortion model carries (sensor_msgs/CameraInfo order
# k1, k2, t1(p1), t2(p2), k3[, k4, k5, k6]).
_MODEL_D_LENGTHS = {"plumb_bob": (5,), "rational_polynomial": (8,), "none": (0,)}


@dataclass
class CameraModel:
    """Intrinsics of one camera, as carried by ``sensor_msgs/CameraInfo``.

    Attributes:
        K: ``(3, 3)`` intrinsic matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (NumPy or torch).
        width: image width in pixels.
        height: image height in pixels.
        distortion_model: ``"plumb_bob"`` (5 coefficients), ``"rational_polynomial"`` (8) or
            ``"none"`` (0; an all-zero ``D`` of any length is accepted for ``"plumb_bob"`` too).
        D: distortion coefficients in CameraInfo order ``k1, k2, p1, p2, k3[, k4, k5, k6]``.

    Raises:
        ValueError: naming the field, for a non-finite or malformed ``K``, ``fx <= 0`` or
        ``fy <= 0``, a non-positive image size, an unknown model or a ``D`` of the wrong length.

    Example:
        >>> cam = CameraModel(K=np.array([[500., 0, 320], [0, 500, 240], [0, 0, 1]]), width=640,
        ...                   height=480, distortion_model="plumb_bob", D=np.zeros(5))
        >>> cam.K_tensor().shape
        torch.Size([3, 3])
    """

    K: Union[np.ndarray, torch.Tensor]
    width: int
    height: int
    distortion_model: str = "none"
    D: Union[np.ndarray, torch.Tensor, Sequence[float]] = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        K = np.asarray(self.K.detach().cpu() if isinstance(self.K, torch.Tensor) else self.K,
                       dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"CameraModel.K: expected shape (3, 3), got {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"CameraModel.K: contains non-finite values: {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"CameraModel.K: fx and fy must be > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
            raise ValueError(f"CameraModel.K: last row must be [0, 0, 1] and K[1,0] 0, got {K.tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"CameraModel.width/height: must be > 0, got {self.width}x{self.height}")
        if self.distortion_model not in _MODEL_D_LENGTHS:
            raise ValueError(f"CameraModel.distortion_model: expected one of "
                             f"{sorted(_MODEL_D_LENGTHS)}, got {self.distortion_model!r}")
        D = self.D.detach().cpu().numpy() if isinstance(self.D, torch.Tensor) else self.D
        D = np.asarray(D, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(D)):
            raise ValueError(f"CameraModel.D: contains non-finite values: {D.tolist()}")
        allowed = _MODEL_D_LENGTHS[self.distortion_model]
        if len(D) not in allowed and not (self.distortion_model == "none" and not np.any(D)):
            raise ValueError(f"CameraModel.D: model {self.distortion_model!r} needs "
                             f"{' or '.join(map(str, allowed))} coefficients, got {len(D)}")
        self.width, self.height = int(self.width), int(self.height)

    @classmethod
    def from_camera_info_fields(cls, K: Sequence[float], D: Sequence[float], distortion_model: str,
                                width: int, height: int) -> "CameraModel":
        """Build from the fields of ``sensor_msgs/CameraInfo`` (``k`` row-major 9 floats, ``d``).

        An empty ``distortion_model`` with an empty or all-zero ``D`` (common for simulated
        cameras) is read as ``"none"``.
        """
        K_arr = np.asarray(list(K), dtype=np.float64)
        if K_arr.size != 9:
            raise ValueError(f"CameraInfo.k: expected 9 values, got {K_arr.size}")
        D_arr = np.asarray(list(D), dtype=np.float64)
        if distortion_model == "" and not np.any(D_arr):
            distortion_model = "none"
        if distortion_model == "none":
            D_arr = np.zeros(0) if not np.any(D_arr) else D_arr
        return cls(K=K_arr.reshape(3, 3), width=width, height=height,
                   distortion_model=distortion_model, D=D_arr)

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(np.asarray(self.D_numpy())))

    def D_numpy(self) -> np.ndarray:
        D = self.D.detach().cpu().numpy() if isinstance(self.D, torch.Tensor) else self.D
        return np.asarray(D, dtype=np.float64).reshape(-1)

    def K_tensor(self, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """``(3, 3)`` K as a tensor."""
        return torch.as_tensor(np.asarray(self.K.detach().cpu() if isinstance(self.K, torch.Tensor)
                                          else self.K, dtype=np.float64), dtype=dtype, device=device)

    def D_tensor(self, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """``(M,)`` distortion coefficients as a tensor (``M = 0`` for ``"none"``)."""
        return torch.as_tensor(self.D_numpy(), dtype=dtype, device=device)


#: Field of view (degrees) along each image axis that a plausible camera has.
PLAUSIBLE_FOV_DEG = (1.0, 179.0)


def check_plausible(camera: CameraModel, fov_deg: Tuple[float, float] = PLAUSIBLE_FOV_DEG,
                    principal_margin: float = 0.5) -> None:
    """Raise ``ValueError`` naming the field when ``camera.K`` cannot describe a real camera of its size.

    A CameraInfo may be valid (finite, positive focal lengths) yet absurd: ``fx = fy = 1e12`` on a 640-px
    image puts a detected object 7e8 m away. Plausible means:

    - the field of view ``2 atan(W / (2 fx))`` (and ``2 atan(H / (2 fy))``) lies within ``fov_deg``;
    - the principal point lies within the image widened by ``principal_margin`` of its size on each
      side (an off-centre crop of a sensor may put it past the edge; far outside is a wrong K).

    Args:
        camera: the camera to check.
        fov_deg: ``(min, max)`` field of view in degrees along each axis.
        principal_margin: how far outside the image, as a fraction of its width/height, ``(cx, cy)``
            may lie.
    """
    K = np.asarray(camera.K.detach().cpu() if isinstance(camera.K, torch.Tensor) else camera.K, dtype=np.float64)
    lo, hi = fov_deg
    for axis, f, size, extent in (("fx", K[0, 0], camera.width, "width"), ("fy", K[1, 1], camera.height, "height")):
        fov = float(np.degrees(2.0 * np.arctan(size / (2.0 * f))))
        if not lo <= fov <= hi:
            raise ValueError(f"CameraInfo.k: {axis} = {f:g} gives a field of view of {fov:.4g} deg over the "
                             f"{size}-px {extent}; plausible is {lo:g} to {hi:g} deg")
    for axis, c, size in (("cx", K[0, 2], camera.width), ("cy", K[1, 2], camera.height)):
        if not -principal_margin * size <= c <= (1.0 + principal_margin) * size:
            raise ValueError(f"CameraInfo.k: principal point {axis} = {c:g} is far outside the {size}-px image "
                             f"(plausible: {-principal_margin * size:g} to {(1.0 + principal_margin) * size:g})")


def _pad_distortion(D: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` with ``M in {0, 4, 5, 8}`` -> ``(B, 8)`` (k1, k2, p1, p2, k3, k4, k5, k6)."""
    M = D.shape[-1]
    if M not in (0, 4, 5, 8):
        raise ValueError(f"D: expected 0, 4, 5 or 8 coefficients (k1,k2,p1,p2[,k3[,k4,k5,k6]]), got {M}")
    return torch.nn.functional.pad(D, (0, 8 - M))


def distort_points(xy: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Apply the OpenCV / ROS lens model to normalised image coordinates.

    Args:
        xy: ``(B, N, 2)`` ideal normalised coordinates ``(X/Z, Y/Z)``.
        D: ``(B, M)`` coefficients, ``M`` in ``{0, 4, 5, 8}``.

    Returns:
        ``(B, N, 2)`` distorted normalised coordinates.
    """
    k = _pad_distortion(D)[:, None, :]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = (1 + ((k[..., 4] * r2 + k[..., 1]) * r2 + k[..., 0]) * r2) / (
        1 + ((k[..., 7] * r2 + k[..., 6]) * r2 + k[..., 5]) * r2)
    xd = x * radial + 2 * k[..., 2] * x * y + k[..., 3] * (r2 + 2 * x * x)
    yd = y * radial + k[..., 2] * (r2 + 2 * y * y) + 2 * k[..., 3] * x * y
    return torch.stack((xd, yd), dim=-1)


def undistort_points(uv: torch.Tensor, K: torch.Tensor, D: torch.Tensor, iterations: int = 20,
                     tol: Optional[float] = None, check_every: int = 4) -> torch.Tensor:
    """Map distorted pixels to the pixels of the ideal pinhole camera with the same ``K``.

    The same fixed-point iteration as ``cv::undistortPoints`` (with ``P = K``), batched; OpenCV's
    default stops after 5 iterations, we run up to ``iterations`` (20 reach float64 precision for
    usual lenses) and stop earlier once converged: every ``check_every`` iterations, if the last
    iteration moved no point by more than ``tol`` (normalised coordinates). Where OpenCV's iteration
    would divide by a non-positive radial factor, the point is returned unchanged, as OpenCV does.
    A batch row whose coefficients are all zero is returned as given (the identity), without
    iterating.

    Args:
        uv: ``(B, N, 2)`` distorted pixel coordinates.
        K: ``(B, 3, 3)`` intrinsics.
        D: ``(B, M)`` coefficients ``k1, k2, p1, p2[, k3[, k4, k5, k6]]``, ``M`` in ``{0, 4, 5, 8}``.
        iterations: most fixed-point iterations.
        tol: convergence threshold on the per-iteration update, normalised coordinates; ``None``:
            ``4 * eps`` of the dtype (a few ulps of a coordinate near 1: the converged value, to
            rounding), ``0``: always run ``iterations``.
        check_every: iterations between convergence checks (each costs one host sync on CUDA).

    Returns:
        ``(B, N, 2)`` undistorted pixel coordinates (``uv`` itself when nothing is distorted).

    Example:
        >>> K = torch.tensor([[[500., 0, 320], [0, 500, 240], [0, 0, 1]]])
        >>> undistort_points(torch.tensor([[[320., 240.]]]), K, torch.zeros(1, 5))
        tensor([[[320., 240.]]])
    """
    check_shape(uv, ("B", "N", 2), "uv")
    check_shape(K, ("B", 3, 3), "K")
    check_shape(D, ("B", "*"), "D")
    check_same_batch(("uv", uv), ("K", K), ("D", D))
    if D.shape[-1] == 0:
        return uv
    k = _pad_distortion(D)  # (B, 8): k1, k2, p1, p2, k3, k4, k5, k6
    nonzero = k != 0
    distorted = nonzero.any(-1)  # (B,)
    # One host read per call for what the batch needs (not one per iteration).
    any_distortion, all_distorted, tangential, rational = torch.stack(
        (distorted.any(), distorted.all(), nonzero[:, 2:4].any(), nonzero[:, 5:].any())).tolist()
    if not any_distortion:
        return uv
    k = k[:, None, :]  # (B, 1, 8): broadcasts over the N points
    f = torch.diagonal(K[:, :2, :2], dim1=-2, dim2=-1)[:, None, :]  # (B, 1, 2) fx, fy
    c = K[:, None, :2, 2]  # (B, 1, 2) cx, cy
    p0 = (uv - c) / f
    if tol is None:
        tol = 4 * torch.finfo(torch.promote_types(p0.dtype, k.dtype)).eps
    k1, k2, k3 = k[..., 0:1], k[..., 1:2], k[..., 4:5]
    k4, k5, k6 = k[..., 5:6], k[..., 6:7], k[..., 7:8]
    if tangential:
        # delta = (2 p1 x y + p2 (r2 + 2 x^2), p1 (r2 + 2 y^2) + 2 p2 x y) = t_sq (r2 + 2 p^2) + t_xy x y
        t_sq = k[..., 2:4].flip(-1)  # (p2, p1)
        t_xy = 2 * k[..., 2:4]  # (2 p1, 2 p2)
    one = torch.ones((), dtype=k.dtype, device=k.device)
    p = p0
    icd_min = None
    for it in range(iterations):
        sq = p * p
        r2 = sq.sum(-1, keepdim=True)  # (B, N, 1)
        # Radial factor 1 / (1 + k1 r2 + k2 r2^2 + k3 r2^3) * (1 + k4 r2 + k5 r2^2 + k6 r2^3), Horner.
        den = torch.addcmul(k2, k3, r2)
        den = torch.addcmul(k1, den, r2)
        den = torch.addcmul(one, den, r2)
        if rational:
            num = torch.addcmul(k5, k6, r2)
            num = torch.addcmul(k4, num, r2)
            num = torch.addcmul(one, num, r2)
            icdist = num / den
        else:
            icdist = den.reciprocal()
        icd_min = icdist if icd_min is None else torch.minimum(icd_min, icdist)
        p_prev = p
        if tangential:
            delta = torch.addcmul(torch.add(r2, sq, alpha=2) * t_sq, p.prod(-1, keepdim=True), t_xy)
            p = (p0 - delta) * icdist
        else:
            p = p0 * icdist
        if tol > 0 and (it + 1) % check_every == 0 and it + 1 < iterations:
            # NaN compares False: a NaN point does not hold the others back.
            if not bool(((p - p_prev).abs() > tol).any()):
                break
    if icd_min is not None:
        p = torch.where(icd_min > 0, p, p0)
    out = p * f + c
    return out if all_distorted else torch.where(distorted[:, None, None], out, uv)


def _size_hw(size: Size) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def crop_affine(boxes: torch.Tensor, size: Size) -> torch.Tensor:
    """The ``(B, 2, 3)`` affine map from image pixels to crop pixels (``cv2.warpAffine``'s M).

    ``u_crop = (u - x0) * W / (x1 - x0) - 0.5`` and the same for ``v`` with ``H`` (conventions.md).

    Args:
        boxes: ``(B, 4)`` crop windows ``(x0, y0, x1, y1)`` in continuous image coordinates.
        size: crop side ``S`` or ``(H, W)``.

    Returns:
        ``(B, 2, 3)`` float tensor, dtype of ``boxes``.
    """
    check_shape(boxes, ("B", 4), "boxes")
    h, w = _size_hw(size)
    x0, y0, x1, y1 = boxes.unbind(-1)
    sx = w / (x1 - x0)
    sy = h / (y1 - y0)
    zero = torch.zeros_like(sx)
    row0 = torch.stack((sx, zero, -x0 * sx - 0.5), dim=-1)
    row1 = torch.stack((zero, sy, -y0 * sy - 0.5), dim=-1)
    return torch.stack((row0, row1), dim=-2)


def crop_intrinsics(K: torch.Tensor, boxes: torch.Tensor, size: Size) -> torch.Tensor:
    """Intrinsics of a crop window resized to ``size``: ``K_crop = A @ K`` (conventions.md).

    Args:
        K: ``(B, 3, 3)`` full-image intrinsics.
        boxes: ``(B, 4)`` crop windows ``(x0, y0, x1, y1)`` in continuous image coordinates.
        size: crop side ``S`` or ``(H, W)``.

    Returns:
        ``(B, 3, 3)`` crop intrinsics.

    Example:
        >>> K = torch.tensor([[[500., 0, 320], [0, 500, 240], [0, 0, 1]]])
        >>> crop_intrinsics(K, torch.tensor([[-0.5, -0.5, 639.5, 479.5]]), (480, 640))[0, 0]
        tensor([500.,   0., 320.])
    """
    check_shape(K, ("B", 3, 3), "K")
    check_shape(boxes, ("B", 4), "boxes")
    check_same_batch(("K", K), ("boxes", boxes))
    A2 = crop_affine(boxes.to(K.dtype), size)
    # A's last row is (0, 0, 1): K_crop's last row is K's.
    return torch.cat((A2 @ K, K[:, 2:]), dim=1)


def pixels_to_normalized(uv: torch.Tensor, size: Size) -> torch.Tensor:
    """Crop pixels -> normalised crop coordinates ``n = (u + 0.5) * 2 / S - 1`` in ``[-1, 1]``.

    Args:
        uv: ``(..., 2)`` pixel coordinates ``(u, v)`` in a crop of ``size``.
        size: crop side ``S`` or ``(H, W)``.

    Returns:
        ``(..., 2)`` normalised coordinates (``grid_sample(align_corners=False)`` convention).
    """
    check_shape(uv, ("...", 2), "uv")
    h, w = _size_hw(size)
    scale = uv.new_tensor([w, h])
    return (uv + 0.5) * 2.0 / scale - 1.0


def normalized_to_pixels(n: torch.Tensor, size: Size) -> torch.Tensor:
    """Inverse of :func:`pixels_to_normalized`: ``u = (n + 1) * S / 2 - 0.5``.

    Args:
        n: ``(..., 2)`` normalised crop coordinates.
        size: crop side ``S`` or ``(H, W)``.

    Returns:
        ``(..., 2)`` crop pixel coordinates.
    """
    check_shape(n, ("...", 2), "n")
    h, w = _size_hw(size)
    scale = n.new_tensor([w, h])
    return (n + 1.0) * scale / 2.0 - 0.5


__all__ = [
    "CameraModel", "distort_points", "undistort_points", "crop_affine", "crop_intrinsics",
    "pixels_to_normalized", "normalized_to_pixels",
]
