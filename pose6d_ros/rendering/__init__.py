"""Rendering: meshes, the differentiable rasterizer (pure PyTorch), the pyrender reference.

``pyrender_ref`` is not imported here: it is the optional OSMesa reference (pyrender through ``_gl``).
"""

from pose6d_ros.rendering.mesh import Mesh, MeshBatch, decimate, load_mesh, pack_meshes
from pose6d_ros.rendering.rasterizer import ContourFragments, Fragments
from pose6d_ros.rendering.renderer import RenderOutput, RenderSettings, render

__all__ = [
    "ContourFragments",
    "Fragments",
    "Mesh",
    "MeshBatch",
    "RenderOutput",
    "RenderSettings",
    "decimate",
    "load_mesh",
    "pack_meshes",
    "render",
]
