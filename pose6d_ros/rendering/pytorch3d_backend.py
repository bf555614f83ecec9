"""pytorch3d behind :func:`pose6d_ros.rendering.render` (``RenderSettings(backend="pytorch3d")``).

pytorch3d is optional: ``make pytorch3d`` builds it from source (tools/build_pytorch3d.sh).  Asking
for this backend without it is an ``ImportError`` that says so.  On a CPU it is much slower than
the pure PyTorch backend (benchmarks/RESULTS.md, "Rendering"); on a GPU its CUDA rasterizer is what
a user would reach for.

The contract is ``render``'s (:mod:`pose6d_ros.rendering.contract`): OpenCV camera, ``(B, 3, H, W)``
RGB, ``(B, 1, H, W)`` silhouette and depth, differentiable w.r.t. ``R``, ``t`` and ``K``.  How each
output is made:

- Vertices are posed and shaded here with :func:`~pose6d_ros.rendering.contract.shade_vertices`,
  the same Lambert + ambient model as the pure PyTorch backend, and handed to pytorch3d in the
  camera frame as per-vertex colours (``TexturesVertex``), so pytorch3d only projects, rasterizes
  and interpolates (perspective-correct barycentrics: Gouraud, as in the pure PyTorch backend).
- A hard pass (no blur, one face per pixel) gives depth, coverage and the colour of covered
  pixels.  It is kept separate from the soft pass because a blurred pass keeps the nearest faces
  *within the blur radius*, which near an occluding edge can be a face that does not cover the
  pixel.
- The soft silhouette is pytorch3d's SoftRas model (``sigmoid_alpha_blend``): a face at squared NDC
  distance ``d`` (negative inside) counts ``p = sigmoid(-d / s)`` with ``s = (sigma px)^2``; the
  soft pass's blur radius ``(margin sigma px)^2`` makes its band span the same ``margin * sigma``
  pixels as the pure PyTorch backend's.  Covered pixels take SoftRas' union
  ``1 - prod_k (1 - p_k)`` over the ``faces_per_pixel`` nearest faces within the blur radius, with
  the covering face of the hard pass always among them (near an occluding edge the K nearest can
  all lie in front of it), so they are >= 0.5.  Uncovered pixels take the ``p`` of their nearest
  face only, i.e. of their distance to the outline, so they are < 0.5: the union there would count
  the front and back faces of the rim and grow the silhouette by about a pixel.  Thresholded at 0.5
  it is exactly the hard silhouette.  Unlike the pure PyTorch backend's, it jumps a little at the
  outline (from 0.5 outside to the union inside), it falls with the squared distance, and inside
  it dips (to no less than 0.5) near edges between faces when ``faces_per_pixel`` is small.
- RGB: covered pixels take their face's colour (the pure PyTorch backend blends its inner band
  with the background too); uncovered pixels of the band take the colour of the nearest point of
  the nearest face (the nearest point of the outline) blended with the background by the
  silhouette, as in the pure PyTorch backend.
- ``znear``: faces with a vertex nearer than ``znear`` are dropped, as in the pure PyTorch backend.
- ``fragments`` and ``contours`` of the output are ``None``; pytorch3d computes in float32, the
  outputs come back in ``R``'s dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from pose6d_ros.rendering.contract import RenderOutput, RenderSettings, shade_vertices
from pose6d_ros.rendering.mesh import MeshBatch

__all__ = ["available", "opencv_to_pytorch3d_cameras", "render_pytorch3d"]

_MISSING = (
    "RenderSettings(backend='pytorch3d') needs pytorch3d, which is not installed "
    "(`make pytorch3d` builds it); use backend='torch'"
)


def available() -> bool:
    """Whether pytorch3d and its compiled kernels import."""
    try:
        import pytorch3d._C  # noqa: F401
    except ImportError:
        return False
    return True


def opencv_to_pytorch3d_cameras(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, size: Tuple[int, int]):
    """pytorch3d ``PerspectiveCameras`` that render exactly what an OpenCV camera sees.

    Args:
        R: ``(B, 3, 3)`` rotations model -> camera (OpenCV frame: x right, y down, z forward).
        t: ``(B, 3)`` translations, metres.
        K: ``(B, 3, 3)`` OpenCV intrinsics, zero skew.
        size: ``(H, W)`` image size.

    OpenCV puts the centre of pixel ``(i, j)`` at ``(u, v) = (j, i)`` (docs/conventions.md);
    pytorch3d, like OpenGL, samples pixel ``j`` at screen ``x = j + 0.5``.  So the principal point
    moves by +0.5 px before pytorch3d's ``cameras_from_opencv_projection`` (which flips x and y,
    transposes ``R`` and scales to NDC, the shorter side spanning [-1, 1]).
    """
    try:
        from pytorch3d.utils import cameras_from_opencv_projection
    except ImportError as exc:
        raise ImportError(_MISSING) from exc

    if bool((K[:, 0, 1] != 0).any()):
        raise ValueError("K: pytorch3d's cameras have no skew; K[:, 0, 1] must be 0")
    shift = torch.zeros_like(K)
    shift[:, :2, 2] = 0.5
    image_size = torch.tensor([[int(size[0]), int(size[1])]], device=K.device).expand(K.shape[0], 2)
    return cameras_from_opencv_projection(R, t, K + shift, image_size)


def render_pytorch3d(
    meshes: MeshBatch,
    object_index: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: Tuple[int, int],
    settings: RenderSettings,
) -> RenderOutput:
    """Same contract as :func:`pose6d_ros.rendering.renderer.render` (inputs already checked there)."""
    try:
        from pytorch3d.renderer import BlendParams, MeshRasterizer, RasterizationSettings, TexturesVertex
        from pytorch3d.renderer.blending import sigmoid_alpha_blend
        from pytorch3d.structures import Meshes
    except ImportError as exc:
        raise ImportError(_MISSING) from exc

    H, W = int(size[0]), int(size[1])
    dtype, dev = R.dtype, R.device
    B = int(object_index.shape[0])
    if B == 0:
        z = R.new_zeros((0, 1, H, W))
        return RenderOutput(rgb=R.new_zeros((0, 3, H, W)), silhouette=z, depth=z.clone())
    f32 = torch.float32
    mb = meshes.to(dev, f32)
    idx = object_index.to(dev).long()
    V = mb.vertices.shape[1]
    Rf, tf = R.to(f32), t.to(f32)
    posed = mb.vertices_and_normals().index_select(0, idx) @ Rf.transpose(1, 2)  # (B, 2V, 3)
    pts = posed[:, :V] + tf[:, None, :]  # camera frame
    colors = shade_vertices(pts, posed[:, V:], mb.vertex_colors.index_select(0, idx), settings)  # (B, V, 3)

    faces = mb.faces.index_select(0, idx)  # (B, F, 3)
    near = pts[..., 2].detach() < settings.znear  # (B, V)
    near_face = torch.gather(near, 1, faces.reshape(B, -1)).view(faces.shape).any(-1)
    keep = mb.face_valid.index_select(0, idx) & ~near_face
    # Padded Meshes: faces of -1 are padding (pytorch3d's convention); unused padded vertices are harmless.
    p3d = Meshes(verts=pts, faces=torch.where(keep[..., None], faces, torch.full_like(faces, -1)),
                 textures=TexturesVertex(verts_features=colors))
    eye = torch.eye(3, dtype=f32, device=dev).expand(B, 3, 3)
    cameras = opencv_to_pytorch3d_cameras(eye, torch.zeros(B, 3, dtype=f32, device=dev), K.to(f32), (H, W))

    hard = MeshRasterizer(
        cameras=cameras,
        raster_settings=RasterizationSettings(image_size=(H, W), blur_radius=0.0, faces_per_pixel=1,
                                              perspective_correct=True, clip_barycentric_coords=False),
    )(p3d)
    covered = hard.pix_to_face[..., :1] >= 0  # (B, H, W, 1)
    face_rgb = p3d.sample_textures(hard)[..., 0, :]  # (B, H, W, 3)
    depth = torch.where(covered, hard.zbuf[..., :1], torch.zeros_like(hard.zbuf[..., :1]))
    bg = torch.tensor(settings.background, dtype=f32, device=dev)

    if settings.hard:
        sil = covered.to(f32)
        rgb = torch.where(covered, face_rgb, bg)
    else:
        px = 2.0 / min(H, W)  # one pixel in NDC units (the shorter side spans [-1, 1])
        soft = MeshRasterizer(
            cameras=cameras,
            raster_settings=RasterizationSettings(
                image_size=(H, W),
                blur_radius=(settings.margin * settings.sigma * px) ** 2,
                faces_per_pixel=settings.faces_per_pixel,
                perspective_correct=True,
                clip_barycentric_coords=True,  # colour at the nearest point of a face the pixel misses
            ),
        )(p3d)
        texels = p3d.sample_textures(soft)  # (B, H, W, K, 3)
        s2 = (settings.sigma * px) ** 2
        # SoftRas union 1 - prod_k (1 - p_k) over the soft pass's faces, with the face that covers the pixel
        # (hard pass) always in it: near an occluding edge the K nearest faces within the blur radius can
        # all be in front of it, and leave it out.
        cover = hard.pix_to_face  # (B, H, W, 1)
        others = dataclasses.replace(soft, pix_to_face=torch.where(soft.pix_to_face == cover, -1, soft.pix_to_face))
        rest = sigmoid_alpha_blend(texels, others, BlendParams(sigma=s2))[..., 3:]
        p_cover = torch.sigmoid(-hard.dists[..., :1] / s2)
        union = 1.0 - (1.0 - rest) * (1.0 - p_cover)
        # The nearest face of an uncovered pixel holds the nearest point of the outline.
        dists = torch.where(soft.pix_to_face >= 0, soft.dists, torch.full_like(soft.dists, float("inf")))
        nearest = dists.argmin(-1, keepdim=True)
        d_near = torch.gather(soft.dists, 3, nearest)
        outer = torch.where(torch.gather(soft.pix_to_face, 3, nearest) >= 0, torch.sigmoid(-d_near / s2),
                            torch.zeros_like(d_near))
        sil = torch.where(covered, union, outer)
        band_rgb = torch.gather(texels, 3, nearest[..., None].expand(B, H, W, 1, 3))[..., 0, :]
        rgb = torch.where(covered, face_rgb, band_rgb * sil + bg * (1.0 - sil))

    def planar(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, C, H, W) in the caller's dtype
        return x.permute(0, 3, 1, 2).to(dtype).contiguous()

    return RenderOutput(rgb=planar(rgb), silhouette=planar(sil), depth=planar(depth), fragments=None, contours=None)
