"""Square crops around detections, resized to the network input, with matching intrinsics.

A detection box ``(x0, y0, x1, y1)`` (continuous image coordinates, ``docs/conventions.md``) becomes
a square *crop window* of side ``padding * max(w, h)`` around the box centre; the window is resampled
to ``S x S`` with exactly the mapping of :func:`pose6d_ros.geometry.camera.crop_affine`, so that
``K_crop = crop_intrinsics(K, window, S)`` projects into the crop.

Two resamplers implement that mapping: :func:`crop_images` (torch ``grid_sample``,
``align_corners=False``, batched, used at runtime and on GPU) and :func:`crop_image_cv2`
(``cv2.warpAffine``, for NumPy data loading).  Outside the image both read zeros.

The paper perturbs the detection box during training ("randomly perturb center position and
rescale the bounding box", Sec. 4): :func:`jitter_boxes`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from pose6d_ros._checks import check_same_batch, check_shape
from pose6d_ros.geometry.camera import crop_affine, crop_intrinsics

__all__ = [
    "DEFAULT_CROP_PADDING",
    "CropBatch",
    "bop_bbox_to_box",
    "coco_bbox_to_box",
    "square_windows",
    "jitter_boxes",
    "crop_grid",
    "crop_images",
    "crop_image_cv2",
    "crop_detections",
]


#: Crop window side over the detection box's longer side, unless a recipe (``data.crop_padding``) says
#: otherwise. A model is served with the padding it was trained with: the value travels in its model
#: card (``ModelCard.crop_padding``), which the runtime and ``evaluate`` read.
DEFAULT_CROP_PADDING = 1.3


@dataclass(frozen=True)
class CropBatch:
    """Crops of one or more images.

    Attributes:
        images: ``(N, C, S, S)`` crops.
        K: ``(N, 3, 3)`` crop intrinsics.
        windows: ``(N, 4)`` crop windows ``(x0, y0, x1, y1)`` in the full image.
    """

    images: torch.Tensor
    K: torch.Tensor
    windows: torch.Tensor


def bop_bbox_to_box(bbox: torch.Tensor) -> torch.Tensor:
    """BOP ``(x, y, w, h)`` -> ``(x0, y0, x1, y1)`` edges in continuous coordinates.

    The BOP toolkit's ``calc_2d_bbox`` spans the pixel *centres* ``x .. x + w``, so the box's edges
    are half a pixel further out.

    Args:
        bbox: ``(..., 4)`` BOP boxes.

    Returns:
        ``(..., 4)`` boxes.
    """
    check_shape(bbox, ("...", 4), "bbox")
    x, y, w, h = bbox.unbind(-1)
    return torch.stack((x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5), dim=-1)


def coco_bbox_to_box(bbox: torch.Tensor) -> torch.Tensor:
    """COCO / BOP-detection ``(x, y, w, h)`` -> ``(x0, y0, x1, y1)`` in our continuous coordinates.

    COCO boxes are continuous with pixel centres at ``+0.5`` (the image spans ``[0, W]``); ours put
    centres at integers (``[-0.5, W - 0.5]``), hence the half-pixel shift.

    Args:
        bbox: ``(..., 4)`` boxes.

    Returns:
        ``(..., 4)`` boxes.
    """
    check_shape(bbox, ("...", 4), "bbox")
    x, y, w, h = bbox.unbind(-1)
    return torch.stack((x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5), dim=-1)


def square_windows(boxes: torch.Tensor, padding: float, min_side: float = 1.0) -> torch.Tensor:
    """Square crop windows centred on ``boxes`` with side ``padding * max(w, h)``.

    Args:
        boxes: ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
        padding: side of the window over the box's longer side.
        min_side: lower bound of the side, pixels (guards degenerate boxes).

    Returns:
        ``(N, 4)`` windows.

    Example:
        >>> square_windows(torch.tensor([[10., 20., 30., 60.]]), padding=1.5)
        tensor([[-10.,  10.,  50.,  70.]])
    """
    check_shape(boxes, ("N", 4), "boxes")
    if padding <= 0:
        raise ValueError(f"padding must be > 0, got {padding}")
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (padding * (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True)).clamp_min(min_side) / 2
    return torch.cat((c - half, c + half), dim=1)


def jitter_boxes(
    boxes: torch.Tensor,
    shift: float = 0.1,
    scale: float = 0.15,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random centre shift and rescale of boxes, to train robustness to detector error.

    The centre moves by ``U(-shift, shift) * (w, h)`` and each side is multiplied by one factor
    ``U(1 - scale, 1 + scale)`` per box (aspect ratio kept).

    Args:
        boxes: ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
        shift: max centre shift as a fraction of width/height.
        scale: max relative size change.
        generator: torch generator (CPU) for reproducibility.

    Returns:
        ``(N, 4)`` jittered boxes.
    """
    check_shape(boxes, ("N", 4), "boxes")
    n = boxes.shape[0]
    u = torch.rand((n, 3), generator=generator, dtype=torch.float64).to(boxes.device, boxes.dtype)
    wh = boxes[:, 2:] - boxes[:, :2]
    c = (boxes[:, :2] + boxes[:, 2:]) / 2 + (2 * u[:, :2] - 1) * shift * wh
    half = wh * (1 + (2 * u[:, 2:] - 1) * scale) / 2
    return torch.cat((c - half, c + half), dim=1)


@functools.lru_cache(maxsize=32)
def _crop_pixel_centres(hc: int, wc: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(Hc, Wc, 2)`` crop pixel centres as fractions of the crop, ``((j + 0.5) / Wc, (i + 0.5) / Hc)``.

    Constant per crop size: cached, so that a frame's handful of windows does not rebuild it. Callers
    must not modify it in place. Built outside inference mode even when first asked for inside it: a
    cached inference tensor would break every later crop whose windows require grad.
    """
    with torch.inference_mode(False):
        xs = (torch.arange(wc, dtype=torch.float64) + 0.5) / wc
        ys = (torch.arange(hc, dtype=torch.float64) + 0.5) / hc
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((gx, gy), dim=-1).to(device, dtype)


def crop_grid(windows: torch.Tensor, image_hw: Tuple[int, int], size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """The ``grid_sample`` grid that resamples ``windows`` of an image to ``size`` crops.

    Follows the crop convention of :func:`~pose6d_ros.geometry.camera.crop_affine` exactly: crop pixel
    ``(j, i)`` reads image point ``u = x0 + (j + 0.5) (x1 - x0) / Wc`` (its inverse, conventions.md),
    whose ``grid_sample`` coordinate (``align_corners=False``) is ``(u + 0.5) * 2 / W - 1``. The map is
    axis-aligned, so the grid is one scale and offset per window and axis applied to a cached grid of
    crop pixel centres.

    Args:
        windows: ``(N, 4)`` crop windows.
        image_hw: ``(H, W)`` of the source image.
        size: crop side ``S`` or ``(Hc, Wc)``.

    Returns:
        ``(N, Hc, Wc, 2)`` grid, ``align_corners=False`` convention.
    """
    check_shape(windows, ("N", 4), "windows")
    hc, wc = (size, size) if isinstance(size, int) else size
    h, w = image_hw
    to_normalized = windows.new_tensor((2.0 / w, 2.0 / h))
    lo = windows[:, :2]
    scale = (windows[:, 2:] - lo) * to_normalized  # (N, 2)
    offset = (lo + 0.5) * to_normalized - 1.0  # (N, 2)
    centres = _crop_pixel_centres(int(hc), int(wc), windows.dtype, windows.device)
    return torch.addcmul(offset[:, None, None, :], centres, scale[:, None, None, :])


def crop_images(
    images: torch.Tensor,
    windows: torch.Tensor,
    size: Union[int, Tuple[int, int]],
    batch_idx: Optional[torch.Tensor] = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample crop windows of images with ``grid_sample(align_corners=False)``; zeros outside.

    Args:
        images: ``(B, C, H, W)`` (or ``(C, H, W)``) images.
        windows: ``(N, 4)`` crop windows ``(x0, y0, x1, y1)``.
        size: crop side ``S`` or ``(Hc, Wc)``.
        batch_idx: ``(N,)`` long, the image of each window; may be omitted when ``B == 1`` or ``B == N``
            (then window ``i`` crops image ``i``).
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(N, C, Hc, Wc)`` crops, dtype of ``images``.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    check_shape(images, ("B", "C", "H", "W"), "images")
    check_shape(windows, ("N", 4), "windows")
    b, c, h, w = images.shape
    n = windows.shape[0]
    grid = crop_grid(windows.to(images.dtype), (h, w), size)
    hc, wc = grid.shape[1:3]
    if n == 0:
        return images.new_zeros((0, c, hc, wc))
    if b == 1 and batch_idx is None:
        # One image, many windows: stack the grids into one tall grid so the image is not copied N times.
        out = F.grid_sample(images, grid.reshape(1, n * hc, wc, 2), mode=mode, padding_mode="zeros", align_corners=False)
        return out.reshape(c, n, hc, wc).transpose(0, 1)
    if batch_idx is None:
        if b != n:
            raise ValueError(f"batch_idx is required when images ({b}) and windows ({n}) differ in number")
        src = images
    else:
        check_shape(batch_idx, ("N",), "batch_idx")
        check_same_batch(("windows", windows), ("batch_idx", batch_idx))
        src = images[batch_idx.long()]
    return F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)


def crop_image_cv2(image: np.ndarray, window: np.ndarray, size: int, interpolation: Optional[int] = None) -> np.ndarray:
    """NumPy/OpenCV path of :func:`crop_images` for one window (tools, main-process loading).

    Not for forked ``DataLoader`` workers once the parent has used OpenCV: its inherited thread
    pool can hang there (:mod:`pose6d_ros.data.target_crops` crops with torch for that reason).

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array (uint8 or float).
        window: ``(4,)`` crop window ``(x0, y0, x1, y1)``.
        size: crop side ``S``.
        interpolation: cv2 flag, ``cv2.INTER_LINEAR`` by default.

    Returns:
        ``(S, S, C)`` / ``(S, S)`` crop, dtype of ``image``; zeros outside the image.
    """
    import cv2

    window = np.asarray(window, dtype=np.float64).reshape(-1)
    if window.shape != (4,):
        raise ValueError(f"window: expected 4 numbers (x0, y0, x1, y1), got shape {window.shape}")
    M = crop_affine(torch.from_numpy(window)[None], size)[0].numpy()
    flags = cv2.INTER_LINEAR if interpolation is None else interpolation
    return cv2.warpAffine(image, M, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_detections(
    image: torch.Tensor,
    K: torch.Tensor,
    boxes: torch.Tensor,
    size: int = 128,
    padding: float = DEFAULT_CROP_PADDING,
) -> CropBatch:
    """Runtime entry: one image, many detections -> network inputs and their intrinsics.

    Args:
        image: ``(3, H, W)`` or ``(1, 3, H, W)`` float image.
        K: ``(3, 3)`` or ``(1, 3, 3)`` intrinsics of the image.
        boxes: ``(N, 4)`` detection boxes ``(x0, y0, x1, y1)``.
        size: crop side ``S``.
        padding: window side over the box's longer side.

    Returns:
        :class:`CropBatch` with ``(N, 3, S, S)`` crops, ``(N, 3, 3)`` ``K_crop``, ``(N, 4)`` windows.

    Example:
        >>> img = torch.rand(3, 480, 640); K = torch.tensor([[500., 0, 320], [0, 500, 240], [0, 0, 1]])
        >>> out = crop_detections(img, K, torch.tensor([[100., 100., 200., 180.]]), size=64)
        >>> out.images.shape, out.K.shape
        (torch.Size([1, 3, 64, 64]), torch.Size([1, 3, 3]))
    """
    if K.dim() == 2:
        K = K.unsqueeze(0)
    check_shape(K, (1, 3, 3), "K")
    check_shape(boxes, ("N", 4), "boxes")
    windows = square_windows(boxes.to(image.dtype), padding)
    crops = crop_images(image, windows, size)
    K_crop = crop_intrinsics(K.to(windows.dtype).expand(windows.shape[0], 3, 3), windows, size)
    return CropBatch(images=crops, K=K_crop, windows=windows)
