"""What both rendering backends share: :class:`RenderSettings`, :class:`RenderOutput`, the soft step
of the silhouette and the vertex shading.

``renderer.py`` (pure PyTorch) and ``pytorch3d_backend.py`` both import this module and neither
imports the other at module level: ``render`` dispatches to the pytorch3d backend lazily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from pose6d_ros.rendering.rasterizer import ContourFragments, Fragments

__all__ = ["RenderSettings", "RenderOutput", "soft_step", "shade_vertices"]


@dataclass(frozen=True)
class RenderSettings:
    """How to render.

    Attributes:
        sigma: soft edge width, pixels (the sigmoid's scale).
        margin: band half-width in units of ``sigma``; beyond it the silhouette is hard.
        hard: hard silhouettes and RGB (data generation); no contour pass.
        background: RGB in [0, 1] where nothing is drawn.
        light_direction: direction the light travels, camera frame (default: a headlight).
        ambient, diffuse: Lambert shading weights.
        light_color: RGB multiplier of the shaded colour.
        shading: apply lighting; otherwise the raw vertex colours.
        znear: faces (and edges) with a vertex nearer than this are dropped, metres.
        faces_per_pixel: faces kept per pixel by the pytorch3d backend's soft pass (its silhouette is
            SoftRas' ``1 - prod(1 - p_k)`` over them inside the object); the pure PyTorch backend
            keeps the nearest face and the nearest outline edge.  With too few, the silhouette dips
            inside near edges between faces (8: mean 0.83-0.97 inside; 32: 0.99).
        backend: ``"torch"`` or ``"pytorch3d"``; asking for pytorch3d when it is not installed is an
            ``ImportError``, not a silent switch.
    """

    sigma: float = 0.7
    margin: float = 3.0
    hard: bool = False
    background: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    light_direction: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    ambient: float = 0.5
    diffuse: float = 0.5
    light_color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    shading: bool = True
    znear: float = 1e-3
    faces_per_pixel: int = 32
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.margin <= 0:
            raise ValueError(f"RenderSettings: sigma and margin must be > 0, got {self.sigma}, {self.margin}")
        if self.faces_per_pixel < 1:
            raise ValueError(f"RenderSettings.faces_per_pixel: must be >= 1, got {self.faces_per_pixel}")
        if self.backend not in ("torch", "pytorch3d"):
            raise ValueError(f"RenderSettings.backend: expected 'torch' or 'pytorch3d', got {self.backend!r}")


@dataclass(frozen=True)
class RenderOutput:
    """Rendered images.

    Attributes:
        rgb: ``(B, 3, H, W)`` in [0, 1].
        silhouette: ``(B, 1, H, W)`` in [0, 1].
        depth: ``(B, 1, H, W)`` metres, 0 where empty (hard z-buffer).
        fragments: the hard z-buffer (``None`` from the pytorch3d backend).
        contours: the soft band (``None`` in hard mode).
    """

    rgb: torch.Tensor
    silhouette: torch.Tensor
    depth: torch.Tensor
    fragments: Optional[Fragments] = None
    contours: Optional[ContourFragments] = None


def soft_step(signed_dist: torch.Tensor, sigma: float, margin: float) -> torch.Tensor:
    """Sigmoid of ``signed_dist / sigma``, affinely rescaled to be 0 at ``-margin * sigma`` and 1 at
    ``+margin * sigma`` (then clamped), so that the band joins the hard silhouette continuously."""
    lo = 1.0 / (1.0 + math.exp(margin))
    return ((torch.sigmoid(signed_dist / sigma) - lo) / (1.0 - 2.0 * lo)).clamp(0.0, 1.0)


def shade_vertices(
    points: torch.Tensor, normals: torch.Tensor, colors: torch.Tensor, settings: RenderSettings
) -> torch.Tensor:
    """Lambert + ambient shading at the vertices (two-sided: normals are turned to the camera).

    Args:
        points: ``(B, V, 3)`` camera-frame vertices.
        normals: ``(B, V, 3)`` camera-frame unit normals.
        colors: ``(B, V, 3)`` albedo in [0, 1].

    Returns:
        ``(B, V, 3)`` shaded colours.
    """
    if not settings.shading:
        return colors
    facing = (normals * points).sum(-1, keepdim=True)
    norm = math.sqrt(sum(c * c for c in settings.light_direction))
    light = torch.tensor([c / norm for c in settings.light_direction], dtype=points.dtype, device=points.device)
    # Lambert term -n.l with n the normal turned to the camera: n = -normal where facing > 0.
    ndl = (normals * light).sum(-1, keepdim=True)
    lambert = torch.where(facing > 0, ndl, -ndl).clamp_(min=0.0)
    out = colors * (settings.ambient + settings.diffuse * lambert)
    if any(c != 1.0 for c in settings.light_color):
        out = out * torch.tensor(settings.light_color, dtype=points.dtype, device=points.device)
    return out
