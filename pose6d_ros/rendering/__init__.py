"""Rendering: meshes, the differentiable rasterizer (pure PyTorch), the pyrender reference."""

from pose6d_ros.rendering.mesh import Mesh, MeshBatch, decimate, load_mesh, pack_meshes

__all__ = ["Mesh", "MeshBatch", "decimate", "load_mesh", "pack_meshes"]
