"""Differentiable renderer: RGB, silhouette and depth of posed meshes, batched over crops.

``render`` = transform -> project -> :func:`rasterize_faces` (hard z-buffer fragments) ->
:func:`rasterize_contours` (soft band along the outline) -> shaders, in the spirit of pytorch3d's
rasterizer/shader split.

The soft silhouette is ``S = f(d / sigma)`` with ``d`` the signed pixel distance to the outline
(positive inside) and ``f`` a logistic sigmoid rescaled to reach exactly 0 and 1 at ``d = -+margin``
(so a pixel's value is continuous as the outline moves past it).  It is SoftRas' sigmoid of the
distance to the nearest edge, restricted to the edges that make up the outline, which keeps the
cost proportional to the outline's length and keeps interior edges from darkening the silhouette.
Colour uses Gouraud shading (Lambert + ambient at the vertices, interpolated with
perspective-correct barycentrics); pixels of the outer band take the colour of the nearest outline
point, blended with the background by ``S``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from pose6d_ros._checks import check_shape
from pose6d_ros.rendering.mesh import MeshBatch
from pose6d_ros.rendering.rasterizer import (
    ContourFragments,
    Fragments,
    project,
    rasterize_contours,
    rasterize_faces,
)

__all__ = ["RenderSettings", "RenderOutput", "render", "shade_vertices", "soft_step"]


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
        gamma: depth-blending temperature; used by the pytorch3d backend only.
        faces_per_pixel: faces kept per pixel; used by the pytorch3d backend only (the pure PyTorch
            backend keeps the nearest face and the nearest outline edge).
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
    gamma: float = 1e-4
    faces_per_pixel: int = 1
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.margin <= 0:
            raise ValueError(f"RenderSettings: sigma and margin must be > 0, got {self.sigma}, {self.margin}")
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
    n = torch.where(facing > 0, -normals, normals)
    light = torch.tensor(settings.light_direction, dtype=points.dtype, device=points.device)
    light = light / light.norm()
    lambert = (-(n * light).sum(-1, keepdim=True)).clamp(min=0.0)
    lc = torch.tensor(settings.light_color, dtype=points.dtype, device=points.device)
    return colors * (settings.ambient + settings.diffuse * lambert) * lc


def _compose(
    pix: torch.Tensor, values: torch.Tensor, fill: torch.Tensor, batch: int, size: Tuple[int, int]
) -> torch.Tensor:
    """A ``(B, C, H, W)`` image equal to ``fill (C,)`` except at flat pixels ``pix (N,)``, which get
    ``values (N, C)``.  One 1-D scatter (autograd: a 1-D gather back), no dense temporaries."""
    H, W = size
    C = values.shape[1]
    b = pix // (H * W)
    hw = pix - b * (H * W)
    ch = torch.arange(C, device=pix.device)
    flat = (b[None, :] * C + ch[:, None]) * (H * W) + hw[None, :]  # (C, N)
    img = fill.to(values.dtype)[None, :, None].expand(batch, C, H * W).contiguous().view(-1)
    return img.index_put((flat.reshape(-1),), values.t().reshape(-1)).view(batch, C, H, W)


def render(
    meshes: MeshBatch,
    object_index: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: Tuple[int, int],
    settings: Optional[RenderSettings] = None,
) -> RenderOutput:
    """Render one posed mesh per batch item.

    Args:
        meshes: packed meshes (moved to ``R``'s device and dtype, cached).
        object_index: ``(B,)`` long, which mesh each item shows.
        R: ``(B, 3, 3)`` rotations model -> camera (OpenCV frame).
        t: ``(B, 3)`` translations, metres.
        K: ``(B, 3, 3)`` intrinsics of the output image (already adjusted to the crop window).
        size: ``(H, W)`` output size.
        settings: :class:`RenderSettings`.

    Returns:
        :class:`RenderOutput`, differentiable w.r.t. ``R``, ``t`` and ``K``.
    """
    settings = settings or RenderSettings()
    check_shape(object_index, ("B",), "object_index")
    check_shape(R, ("B", 3, 3), "R")
    check_shape(t, ("B", 3), "t")
    check_shape(K, ("B", 3, 3), "K")
    n = object_index.shape[0]
    for name, x in (("R", R), ("t", t), ("K", K)):
        if x.shape[0] != n:
            raise ValueError(f"render: {name} has batch {x.shape[0]}, object_index has {n}")
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"render: size must be positive, got {size}")
    if object_index.numel() and (int(object_index.min()) < 0 or int(object_index.max()) >= len(meshes)):
        raise ValueError(f"render: object_index out of range [0, {len(meshes)})")
    if settings.backend == "pytorch3d":
        from pose6d_ros.rendering.pytorch3d_backend import render_pytorch3d

        return render_pytorch3d(meshes, object_index, R, t, K, (H, W), settings)

    dtype, dev = R.dtype, R.device
    mb = meshes.to(dev, dtype)
    idx = object_index.to(dev).long()
    verts = mb.vertices[idx]  # (B, V, 3)
    pts = verts @ R.transpose(1, 2) + t[:, None, :]
    uv, z = project(pts, K.to(dtype))
    faces = mb.faces[idx]
    frags = rasterize_faces(uv, z, faces, mb.face_valid[idx], (H, W), settings.znear)

    normals = mb.vertex_normals[idx] @ R.transpose(1, 2)
    colors = shade_vertices(pts, normals, mb.vertex_colors[idx], settings)  # (B, V, 3)

    B = idx.shape[0]
    fv = faces.reshape(-1, 3).index_select(0, frags.face + (frags.pix // (H * W)) * faces.shape[1])
    fv = fv + ((frags.pix // (H * W)) * colors.shape[1])[:, None]  # flat vertex ids
    cflat = colors.reshape(-1, 3)
    face_rgb = (
        cflat.index_select(0, fv[:, 0]) * frags.bary[:, 0:1]
        + cflat.index_select(0, fv[:, 1]) * frags.bary[:, 1:2]
        + cflat.index_select(0, fv[:, 2]) * frags.bary[:, 2:3]
    )
    bg = torch.tensor(settings.background, dtype=dtype, device=dev)
    zero = torch.zeros(1, dtype=dtype, device=dev)
    depth = _compose(frags.pix, frags.zbuf[:, None], zero, B, (H, W))

    contours = None
    if settings.hard:
        ones = torch.ones_like(frags.zbuf)[:, None]
        sil = _compose(frags.pix, ones, zero, B, (H, W))
        rgb = _compose(frags.pix, face_rgb, bg, B, (H, W))
    else:
        covered = frags.covered()
        contours = rasterize_contours(
            uv,
            z,
            mb.edges[idx],
            mb.edge_opposite[idx],
            mb.edge_valid[idx],
            covered,
            settings.margin * settings.sigma,
            settings.znear,
        )
        s_band = soft_step(contours.signed_dist, settings.sigma, settings.margin)[:, None]
        # Outer band pixels have no face: they take the colour of the nearest outline point.
        P = B * H * W
        in_band = torch.zeros(P, dtype=torch.bool, device=dev)
        in_band[contours.pix] = True
        slot = torch.full((P,), -1, dtype=torch.int64, device=dev)
        slot[frags.pix] = torch.arange(frags.pix.shape[0], device=dev)
        bb = contours.pix // (H * W)
        ev = mb.edges[idx].reshape(-1, 2).index_select(0, contours.edge + bb * mb.edges.shape[1])
        ev = ev + (bb * colors.shape[1])[:, None]
        edge_rgb = torch.lerp(cflat.index_select(0, ev[:, 0]), cflat.index_select(0, ev[:, 1]), contours.s[:, None])
        cslot = slot.index_select(0, contours.pix)
        inner_rgb = face_rgb.index_select(0, cslot.clamp(min=0))
        band_rgb = torch.where((cslot >= 0)[:, None], inner_rgb, edge_rgb)
        band_rgb = band_rgb * s_band + bg * (1.0 - s_band)
        solid = ~in_band.index_select(0, frags.pix)
        pix_all = torch.cat([frags.pix[solid], contours.pix])
        sil = _compose(pix_all, torch.cat([torch.ones_like(frags.zbuf[solid])[:, None], s_band]), zero, B, (H, W))
        rgb = _compose(pix_all, torch.cat([face_rgb[solid], band_rgb]), bg, B, (H, W))
    return RenderOutput(rgb=rgb, silhouette=sil, depth=depth, fragments=frags, contours=contours)
