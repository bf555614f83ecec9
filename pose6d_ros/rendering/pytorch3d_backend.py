"""Optional pytorch3d backend behind :func:`pose6d_ros.rendering.render` (``RenderSettings(backend="pytorch3d")``).

pytorch3d is not installed in this project's environment (on a CPU it is 20-700x slower than the
pure PyTorch backend, see docs/calibration figures); this module is for GPU machines that have it.
It is untested here: its test skips when pytorch3d is missing.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from pose6d_ros.rendering.mesh import MeshBatch

__all__ = ["render_pytorch3d", "available"]


def available() -> bool:
    """Whether pytorch3d can be imported."""
    try:
        import pytorch3d  # noqa: F401
    except ImportError:
        return False
    return True


def render_pytorch3d(
    meshes: MeshBatch,
    object_index: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    size: Tuple[int, int],
    settings,
):
    """Same contract as :func:`pose6d_ros.rendering.renderer.render` (inputs already checked there)."""
    try:
        from pytorch3d.renderer import (
            BlendParams,
            DirectionalLights,
            HardPhongShader,
            MeshRasterizer,
            RasterizationSettings,
            SoftPhongShader,
            SoftSilhouetteShader,
            TexturesVertex,
        )
        from pytorch3d.structures import Meshes
        from pytorch3d.utils import cameras_from_opencv_projection
    except ImportError as exc:
        raise ImportError(
            "RenderSettings(backend='pytorch3d') needs pytorch3d, which is not installed; "
            "use backend='torch'"
        ) from exc

    from pose6d_ros.rendering.renderer import RenderOutput

    H, W = size
    dev, dtype = R.device, R.dtype
    mb = meshes.to(dev, torch.float32)
    idx = object_index.to(dev).long()
    verts, faces, cols = [], [], []
    for i in idx.tolist():  # pytorch3d's Meshes wants per-item lists; B is small
        nv, nf = int(mb.num_vertices[i]), int(mb.num_faces[i])
        verts.append(mb.vertices[i, :nv])
        faces.append(mb.faces[i, :nf])
        cols.append(mb.vertex_colors[i, :nv])
    p3d = Meshes(verts=verts, faces=faces, textures=TexturesVertex(verts_features=cols))
    image_size = torch.tensor([[H, W]], device=dev).expand(idx.shape[0], 2)
    cameras = cameras_from_opencv_projection(R.float(), t.float(), K.float(), image_size)
    # blur radius such that the sigmoid is ~1e-4 at the edge of the soft band (pytorch3d's recipe),
    # with sigma converted from pixels to NDC^2 units.
    px = 2.0 / min(H, W)
    sigma_ndc = (settings.sigma * px) ** 2
    blend = BlendParams(sigma=sigma_ndc, gamma=settings.gamma, background_color=settings.background)
    blur = 0.0 if settings.hard else math.log(1.0 / 1e-4 - 1.0) * sigma_ndc
    raster = MeshRasterizer(
        cameras=cameras,
        raster_settings=RasterizationSettings(
            image_size=(H, W), blur_radius=blur, faces_per_pixel=1 if settings.hard else settings.faces_per_pixel
        ),
    )
    frags = raster(p3d)
    lights = DirectionalLights(
        device=dev,
        ambient_color=((settings.ambient,) * 3,),
        diffuse_color=((settings.diffuse,) * 3,),
        specular_color=((0.0, 0.0, 0.0),),
        # pytorch3d's camera frame has x and y flipped w.r.t. OpenCV's; its direction points to the light.
        direction=((settings.light_direction[0], settings.light_direction[1], -settings.light_direction[2]),),
    )
    if settings.hard:
        rgba = HardPhongShader(device=dev, cameras=cameras, lights=lights, blend_params=blend)(frags, p3d)
        sil = (frags.pix_to_face[..., :1] >= 0).float()
    else:
        rgba = SoftPhongShader(device=dev, cameras=cameras, lights=lights, blend_params=blend)(frags, p3d)
        sil = SoftSilhouetteShader(blend_params=blend)(frags, p3d)[..., 3:4]
    depth = torch.where(frags.pix_to_face[..., :1] >= 0, frags.zbuf[..., :1], torch.zeros_like(frags.zbuf[..., :1]))
    to = lambda x: x.permute(0, 3, 1, 2).to(dtype).contiguous()  # noqa: E731
    return RenderOutput(rgb=to(rgba[..., :3]), silhouette=to(sil), depth=to(depth), fragments=None, contours=None)
