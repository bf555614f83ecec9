"""Batched image augmentation in torch: cross-domain occlusion (Sec. 3.2) and colour jitter.

Randomness comes from an optional ``torch.Generator`` so that a run can be replayed; parameters are
drawn on the generator's device and moved to the images' device.

Cross-domain occlusion (paper Sec. 3.2, "Cross domain occlusion augmentation"; ``docs/method.md``):
randomly sized patches of Gaussian noise go at the *same* places on the real crop ``x_r`` and on the
rendered crop ``r_{h1}``, and the rendered silhouette ``m_{h1}`` is set to 0 under them, so the masked
real image ``M(x_r, m_{h1})`` never contains the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from pose6d_ros._checks import check_shape

__all__ = [
    "OcclusionConfig",
    "OcclusionResult",
    "occlusion_masks",
    "cross_domain_occlusion",
    "ColorAugmentConfig",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "gaussian_blur",
    "color_augment",
]

_LUMA = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights (ITU-R 601, rounded)


def _rand(shape: Tuple[int, ...], generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


def _randn(shape: Tuple[int, ...], generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------------
# Cross-domain occlusion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcclusionConfig:
    """Occlusion patches.

    Attributes:
        min_patches, max_patches: patches per sample, ``U{min..max}``.
        min_size, max_size: patch side as a fraction of the image side, drawn per axis.
        noise_mean, noise_std: the Gaussian noise that fills a patch (clamped to ``[0, 1]``).
    """

    min_patches: int = 0
    max_patches: int = 3
    min_size: float = 0.1
    max_size: float = 0.4
    noise_mean: float = 0.5
    noise_std: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.min_patches <= self.max_patches:
            raise ValueError(f"need 0 <= min_patches <= max_patches, got {self.min_patches}, {self.max_patches}")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")


@dataclass(frozen=True)
class OcclusionResult:
    """Occluded tensors and the patch mask.

    Attributes:
        real: ``(B, C, H, W)`` real crops with patches.
        rendered: ``(B, C, H, W)`` rendered crops with the same patches.
        silhouette: ``(B, 1, H, W)`` silhouette, 0 under the patches (``None`` if none was given).
        mask: ``(B, 1, H, W)`` float, 1 under a patch.
    """

    real: torch.Tensor
    rendered: torch.Tensor
    silhouette: Optional[torch.Tensor]
    mask: torch.Tensor


def occlusion_masks(
    batch: int,
    height: int,
    width: int,
    cfg: OcclusionConfig = OcclusionConfig(),
    generator: Optional[torch.Generator] = None,
    like: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Random axis-aligned patch masks, unions of up to ``max_patches`` rectangles per sample.

    A patch's centre is uniform over the image, so patches may be cut by the border.

    Args:
        batch, height, width: mask size.
        cfg: patch counts and sizes.
        generator: torch generator.
        like: tensor giving the device and dtype of the result (float32 CPU by default).

    Returns:
        ``(B, 1, H, W)`` float mask in ``{0, 1}``.
    """
    like = torch.empty(0) if like is None else like
    p = max(cfg.max_patches, 1)
    u = _rand((batch, p, 5), generator, like)
    span = cfg.max_patches - cfg.min_patches + 1
    count = cfg.min_patches + torch.floor(u[:, 0, 4:5] * span).clamp_max(span - 1)  # (B, 1)
    active = torch.arange(p, device=like.device, dtype=like.dtype)[None] < count  # (B, P)
    size = (cfg.min_size + (cfg.max_size - cfg.min_size) * u[:, :, 2:4]) * like.new_tensor([width, height])
    centre = u[:, :, 0:2] * like.new_tensor([width, height]) - 0.5  # continuous coords, edges at -0.5
    lo, hi = centre - size / 2, centre + size / 2  # (B, P, 2)
    xs = torch.arange(width, device=like.device, dtype=like.dtype)
    ys = torch.arange(height, device=like.device, dtype=like.dtype)
    in_x = (xs >= lo[..., 0:1]) & (xs < hi[..., 0:1])  # (B, P, W)
    in_y = (ys >= lo[..., 1:2]) & (ys < hi[..., 1:2])  # (B, P, H)
    inside = in_y[..., :, None] & in_x[..., None, :] & active[..., None, None]  # (B, P, H, W)
    return inside.any(1, keepdim=True).to(like.dtype)


def cross_domain_occlusion(
    real: torch.Tensor,
    rendered: torch.Tensor,
    silhouette: Optional[torch.Tensor] = None,
    cfg: OcclusionConfig = OcclusionConfig(),
    generator: Optional[torch.Generator] = None,
) -> OcclusionResult:
    """Put the same Gaussian-noise patches on ``real`` and ``rendered``; zero ``silhouette`` there.

    Gradients flow to every input outside the patches (the renderer's output stays differentiable).

    Args:
        real: ``(B, C, H, W)`` real crops ``x_r`` in ``[0, 1]``.
        rendered: ``(B, C, H, W)`` rendered crops ``r_{h1}``.
        silhouette: ``(B, 1, H, W)`` rendered silhouette ``m_{h1}``, or ``None``.
        cfg: patch settings.
        generator: torch generator.

    Returns:
        :class:`OcclusionResult`.

    Example:
        >>> x, r, m = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
        >>> out = cross_domain_occlusion(x, r, m, generator=torch.Generator().manual_seed(0))
        >>> bool(((out.real == out.rendered) | (out.mask == 0)).all())
        True
    """
    check_shape(real, ("B", "C", "H", "W"), "real")
    b, c, h, w = real.shape
    check_shape(rendered, (b, c, h, w), "rendered")
    if silhouette is not None:
        check_shape(silhouette, (b, 1, h, w), "silhouette")
    mask = occlusion_masks(b, h, w, cfg, generator, like=real.detach())
    noise = (cfg.noise_mean + cfg.noise_std * _randn((b, c, h, w), generator, real.detach())).clamp(0, 1)
    occluded = mask.bool()
    out_real = torch.where(occluded, noise, real)
    out_rendered = torch.where(occluded, noise.to(rendered.dtype), rendered)
    out_sil = None if silhouette is None else torch.where(occluded, torch.zeros_like(silhouette), silhouette)
    return OcclusionResult(real=out_real, rendered=out_rendered, silhouette=out_sil, mask=mask)


# ---------------------------------------------------------------------------------------------
# Colour augmentation
# ---------------------------------------------------------------------------------------------


def _per_sample(f: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    f = torch.as_tensor(f, device=x.device, dtype=x.dtype)
    if f.dim() == 0:
        f = f.expand(x.shape[0])
    check_shape(f, (x.shape[0],), name)
    return f.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * factor)``, as torchvision's ``adjust_brightness``.

    Args:
        x: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        factor: ``(B,)`` or scalar; 1 leaves the image unchanged.

    Returns:
        ``(B, 3, H, W)``.
    """
    check_shape(x, ("B", 3, "H", "W"), "x")
    return (x * _per_sample(factor, x, "factor")).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level of each image, as torchvision's ``adjust_contrast``.

    Args:
        x: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        factor: ``(B,)`` or scalar; 0 gives a flat grey image, 1 the input.
    """
    check_shape(x, ("B", 3, "H", "W"), "x")
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    f = _per_sample(factor, x, "factor")
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grey version, as torchvision's ``adjust_saturation``.

    Args:
        x: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        factor: ``(B,)`` or scalar; 0 gives grey, 1 the input.
    """
    check_shape(x, ("B", 3, "H", "W"), "x")
    f = _per_sample(factor, x, "factor")
    return (f * x + (1 - f) * _gray(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns (torchvision's ``hue_factor``), per sample.

    Args:
        x: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        shift: ``(B,)`` or scalar in ``[-0.5, 0.5]``.
    """
    from kornia.enhance import adjust_hue as _k_adjust_hue

    check_shape(x, ("B", 3, "H", "W"), "x")
    s = _per_sample(shift, x, "shift").view(-1)
    return _k_adjust_hue(x, 2 * math.pi * s).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: Optional[float] = None) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur, reflect-101 border (OpenCV's default).

    Args:
        x: ``(B, C, H, W)``.
        sigma: ``(B,)`` or scalar, pixels; ``<= 1e-3`` leaves a sample unchanged.
        max_sigma: sets the kernel size ``2 * ceil(3 * max_sigma) + 1`` (default: the largest sigma).
    """
    from kornia.filters import gaussian_blur2d

    check_shape(x, ("B", "C", "H", "W"), "x")
    s = _per_sample(sigma, x, "sigma").view(-1)
    ms = float(s.max()) if max_sigma is None else float(max_sigma)
    k = 2 * math.ceil(3 * ms) + 1
    if k <= 1:
        return x
    k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect padding needs k // 2 < side
    s = s.clamp_min(1e-3)  # a 1e-3 px Gaussian is a delta on the pixel grid
    return gaussian_blur2d(x, (k, k), torch.stack((s, s), dim=1), border_type="reflect")


@dataclass(frozen=True)
class ColorAugmentConfig:
    """Colour augmentation, each op drawn per sample and applied with probability ``p``.

    Attributes:
        brightness: factor ``U(1 - b, 1 + b)``.
        contrast: factor ``U(1 - c, 1 + c)``.
        saturation: factor ``U(1 - s, 1 + s)``.
        hue: shift ``U(-h, h)`` turns.
        noise_std: Gaussian noise of std ``U(0, noise_std)``.
        blur_sigma: Gaussian blur of sigma ``U(0, blur_sigma)`` pixels.
        p: probability of each op (blur uses ``p_blur``).
        p_blur: probability of blurring.
    """

    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    noise_std: float = 0.03
    blur_sigma: float = 1.0
    p: float = 0.8
    p_blur: float = 0.3


def color_augment(
    x: torch.Tensor,
    cfg: ColorAugmentConfig = ColorAugmentConfig(),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random brightness, contrast, saturation, hue, noise and blur, batched, in that order.

    Args:
        x: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        cfg: ranges and probabilities.
        generator: torch generator; the same seed gives the same output.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    check_shape(x, ("B", 3, "H", "W"), "x")
    b = x.shape[0]
    u = _rand((b, 7), generator, x)  # factors
    on = _rand((b, 6), generator, x) < x.new_tensor([cfg.p] * 5 + [cfg.p_blur])
    one = torch.ones_like(u[:, 0])

    def sym(i: int, r: float) -> torch.Tensor:
        return torch.where(on[:, i], 1 + r * (2 * u[:, i] - 1), one)

    x = adjust_brightness(x, sym(0, cfg.brightness))
    x = adjust_contrast(x, sym(1, cfg.contrast))
    x = adjust_saturation(x, sym(2, cfg.saturation))
    if cfg.hue > 0:
        x = adjust_hue(x, torch.where(on[:, 3], cfg.hue * (2 * u[:, 3] - 1), torch.zeros_like(one)))
    if cfg.noise_std > 0:
        std = torch.where(on[:, 4], cfg.noise_std * u[:, 4], torch.zeros_like(one)).view(-1, 1, 1, 1)
        x = (x + std * _randn(tuple(x.shape), generator, x)).clamp(0, 1)
    if cfg.blur_sigma > 0:
        sigma = torch.where(on[:, 5], cfg.blur_sigma * u[:, 5], torch.zeros_like(one))
        x = gaussian_blur(x, sigma, max_sigma=cfg.blur_sigma)
    return x
