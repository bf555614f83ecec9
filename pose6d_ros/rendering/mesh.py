"""Meshes: loading (trimesh), decimation, and packing into padded tensors for batched rendering.

A :class:`Mesh` is the one in-memory mesh record every renderer consumes: vertices in metres in the
object (model) frame, triangle faces, and per-vertex RGB colours in ``[0, 1]``.  Textures are baked
into vertex colours at load time (sampled at the vertices' UVs) because the differentiable
rasterizer interpolates vertex attributes only; the pyrender reference renders the very same
vertex colours so that the two renderers see identical inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pose6d_ros._checks import check_shape
from pose6d_ros.registry import ObjectInfo

__all__ = [
    "Mesh",
    "MeshBatch",
    "load_mesh",
    "decimate",
    "pack_meshes",
    "object_mesh",
    "pack_objects",
    "UNIT_SCALE",
]

#: Multiplier from a mesh file's length unit to metres.
UNIT_SCALE: Dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001}

_GREY = 0.7


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh in the object frame.

    Attributes:
        vertices: ``(V, 3)`` float32, metres.
        faces: ``(F, 3)`` int64 vertex indices.
        vertex_colors: ``(V, 3)`` float32 RGB in ``[0, 1]``.
        name: a label for error messages (usually the file name).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor
    name: str = ""

    def __post_init__(self) -> None:
        check_shape(self.vertices, ("V", 3), f"Mesh({self.name}).vertices")
        check_shape(self.faces, ("F", 3), f"Mesh({self.name}).faces")
        check_shape(self.vertex_colors, ("V", 3), f"Mesh({self.name}).vertex_colors")
        if self.vertices.shape[0] != self.vertex_colors.shape[0]:
            raise ValueError(
                f"Mesh({self.name}): {self.vertices.shape[0]} vertices but "
                f"{self.vertex_colors.shape[0]} vertex colours"
            )
        if self.faces.dtype != torch.int64:
            raise TypeError(f"Mesh({self.name}).faces: expected int64, got {self.faces.dtype}")
        if self.faces.numel() and (
            int(self.faces.min()) < 0 or int(self.faces.max()) >= self.vertices.shape[0]
        ):
            raise ValueError(f"Mesh({self.name}).faces: index out of range [0, {self.vertices.shape[0]})")

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def extents(self) -> torch.Tensor:
        """``(3,)`` size of the axis-aligned bounding box, metres."""
        return self.vertices.max(0).values - self.vertices.min(0).values

    @property
    def diameter(self) -> float:
        """Largest vertex-to-vertex distance, metres (exact up to 5k vertices, else on a subsample)."""
        v = self.vertices.double()
        if v.shape[0] > 5000:
            v = v[torch.linspace(0, v.shape[0] - 1, 5000).long()]
        return float(torch.cdist(v, v).max())

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` with the same geometry and vertex colours (no processing)."""
        import trimesh

        colors = np.concatenate(
            [
                np.clip(self.vertex_colors.numpy() * 255.0 + 0.5, 0, 255),
                np.full((self.num_vertices, 1), 255.0),
            ],
            axis=1,
        ).astype(np.uint8)
        return trimesh.Trimesh(
            vertices=self.vertices.double().numpy(),
            faces=self.faces.numpy(),
            vertex_colors=colors,
            process=False,
        )

    @staticmethod
    def from_arrays(
        vertices: np.ndarray,
        faces: np.ndarray,
        vertex_colors: Optional[np.ndarray] = None,
        name: str = "",
    ) -> "Mesh":
        """Build a mesh from NumPy arrays (colours default to grey)."""
        v = torch.as_tensor(np.asarray(vertices, dtype=np.float32))
        f = torch.as_tensor(np.asarray(faces, dtype=np.int64))
        if vertex_colors is None:
            c = torch.full((v.shape[0], 3), _GREY, dtype=torch.float32)
        else:
            c = torch.as_tensor(np.asarray(vertex_colors, dtype=np.float32))
        return Mesh(v.contiguous(), f.contiguous(), c.contiguous(), name)


def _vertex_colors_of(tm, path: str) -> np.ndarray:
    """``(V, 3)`` colours in [0, 1] of a ``trimesh.Trimesh``: texture at UVs, else colours, else grey."""
    visual = tm.visual
    kind = getattr(visual, "kind", None)
    n = len(tm.vertices)
    colors: Optional[np.ndarray] = None
    try:
        if kind == "texture":
            material = getattr(visual, "material", None)
            image = getattr(material, "image", None) if material is not None else None
            if image is None:
                image = getattr(material, "baseColorTexture", None)
            if image is not None and getattr(visual, "uv", None) is not None:
                colors = np.asarray(visual.to_color().vertex_colors)[:, :3] / 255.0
            elif material is not None:
                # A textured material whose image is missing: fall back on its flat colour.
                main = getattr(material, "main_color", None)
                if main is not None:
                    colors = np.tile(np.asarray(main, dtype=np.float64)[:3] / 255.0, (n, 1))
        elif kind in ("vertex", "face"):
            colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
    except Exception:  # trimesh raises various errors on odd materials; grey is the documented fallback
        colors = None
    if colors is None or colors.shape != (n, 3):
        colors = np.full((n, 3), _GREY)
    return colors.astype(np.float32)


def load_mesh(
    path: Union[str, os.PathLike],
    scale: float = 1.0,
    units: Optional[str] = None,
    name: Optional[str] = None,
) -> Mesh:
    """Load a PLY/OBJ/... mesh with trimesh as a :class:`Mesh` in metres.

    Args:
        path: the mesh file.  A file holding a scene (several geometries) is flattened into one mesh
            with each geometry's scene transform applied.
        scale: extra multiplier applied after the unit conversion.
        units: the file's length unit, ``"m"``, ``"cm"`` or ``"mm"`` (default ``"m"``).  BOP models are
            in ``"mm"``.
        name: label for error messages; defaults to the file name.

    Returns:
        The mesh, colours sampled from the texture at the vertices' UVs when there is one, else the
        file's vertex/face colours, else grey.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, or no triangles in it, or an unknown unit.
    """
    import trimesh

    p = Path(path)
    label = name or p.name
    if units is None:
        units = "m"
    if units not in UNIT_SCALE:
        raise ValueError(f"load_mesh({p}): units must be one of {sorted(UNIT_SCALE)}, got {units!r}")
    if not p.is_file():
        raise FileNotFoundError(f"load_mesh: mesh file not found: {p}")
    try:
        loaded = trimesh.load(str(p))
    except Exception as exc:  # trimesh surfaces parser errors of many kinds
        raise ValueError(f"load_mesh: cannot read mesh file {p}: {exc}") from exc

    if isinstance(loaded, trimesh.Scene):
        parts = []
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            geom = loaded.geometry[geom_name]
            if not isinstance(geom, trimesh.Trimesh):
                continue
            g = geom.copy()
            g.apply_transform(transform)
            parts.append(g)
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        parts = []
    parts = [g for g in parts if len(g.faces) > 0]
    if not parts:
        raise ValueError(f"load_mesh: no triangles in mesh file {p}")

    verts, faces, colors = [], [], []
    offset = 0
    for g in parts:
        verts.append(np.asarray(g.vertices, dtype=np.float64))
        faces.append(np.asarray(g.faces, dtype=np.int64) + offset)
        colors.append(_vertex_colors_of(g, str(p)))
        offset += len(g.vertices)
    v = np.concatenate(verts) * (UNIT_SCALE[units] * float(scale))
    if not np.all(np.isfinite(v)):
        raise ValueError(f"load_mesh: non-finite vertex coordinates in {p}")
    return Mesh.from_arrays(v, np.concatenate(faces), np.concatenate(colors), name=label)


def _has_quadric_decimation() -> bool:
    try:
        import trimesh

        if not hasattr(trimesh.Trimesh, "simplify_quadric_decimation"):
            return False
        import fast_simplification  # noqa: F401  (trimesh's backend for quadric decimation)

        return True
    except ImportError:
        return False


def _cluster_vertices(mesh: Mesh, cell: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = mesh.vertices.double().numpy()
    c = mesh.vertex_colors.double().numpy()
    keys = np.floor((v - v.min(0)) / cell).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n).astype(np.float64)[:, None]
    new_v = np.zeros((n, 3))
    new_c = np.zeros((n, 3))
    np.add.at(new_v, inverse, v)
    np.add.at(new_c, inverse, c)
    new_v /= counts
    new_c /= counts
    f = inverse[mesh.faces.numpy()]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[keep]
    # Clustering can fold two triangles onto the same vertex triple; keep one.
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(first)]
    used = np.unique(f)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return new_v[used], remap[f], new_c[used]


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """Reduce ``mesh`` to at most ``max_faces`` triangles, keeping vertex colours.

    Uses trimesh's quadric decimation when its backend (``fast_simplification``) is installed,
    otherwise vertex clustering on a regular grid whose cell is found by bisection.  New vertices take
    the colour of the nearest original vertex (quadric) or the mean colour of their cluster.
    """
    if max_faces < 4:
        raise ValueError(f"decimate({mesh.name}): max_faces must be >= 4, got {max_faces}")
    if mesh.num_faces <= max_faces:
        return mesh
    if _has_quadric_decimation():
        from scipy.spatial import cKDTree

        tm = mesh.to_trimesh()
        out = tm.simplify_quadric_decimation(face_count=max_faces)
        if 0 < len(out.faces) <= max_faces:
            _, nearest = cKDTree(mesh.vertices.double().numpy()).query(np.asarray(out.vertices))
            colors = mesh.vertex_colors.numpy()[nearest]
            return Mesh.from_arrays(out.vertices, out.faces, colors, name=mesh.name)
    extent = float(mesh.extents.max())
    lo, hi = 0.0, extent  # face count decreases (roughly) monotonically with the cell size
    best = None
    for _ in range(30):
        cell = 0.5 * (lo + hi) if best is not None or lo > 0 else extent / 64.0
        v, f, c = _cluster_vertices(mesh, cell)
        if len(f) <= max_faces:
            best = (v, f, c)
            hi = cell
        else:
            lo = cell
        if best is not None and len(best[1]) >= 0.9 * max_faces:
            break
    if best is None or len(best[1]) == 0:
        raise ValueError(f"decimate({mesh.name}): could not reach {max_faces} faces")
    v, f, c = best
    return Mesh.from_arrays(v, f, c, name=mesh.name)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(V, 3)`` area-weighted vertex normals (zero for isolated vertices)."""
    tri = vertices[faces]
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    vn = torch.zeros_like(vertices)
    vn.index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)


def _edge_topology(vertices: torch.Tensor, faces: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Undirected edges with up to two adjacent faces each.

    Vertices at the same position (UV or normal seams) are welded first, so that a seam is not taken
    for a border of the surface.

    Returns:
        edges ``(E, 2)`` vertex ids, ``edge_faces (E, 2)`` face ids (``-1`` on a border edge), and
        ``edge_opposite (E, 2)`` the vertex of each adjacent face not on the edge (``-1`` likewise).
        An edge shared by ``k > 2`` faces (non-manifold) is listed ``k - 1`` times, pairing
        consecutive faces, so that every adjacent face is seen.
    """
    _, first, weld = np.unique(
        vertices.double().numpy().round(9), axis=0, return_index=True, return_inverse=True
    )
    weld = weld.reshape(-1)
    num_vertices = len(first)
    f = weld[faces.numpy()]
    nf = len(f)
    if nf == 0:
        z = torch.zeros((0, 2), dtype=torch.int64)
        return z, z.clone(), z.clone()
    he = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])  # (3F, 2) half-edges
    opp = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    fid = np.tile(np.arange(nf), 3)
    key = np.sort(he, axis=1)
    code = key[:, 0].astype(np.int64) * num_vertices + key[:, 1]
    order = np.argsort(code, kind="stable")
    cs = code[order]
    same_next = np.r_[cs[1:] == cs[:-1], False]
    same_prev = np.r_[False, cs[1:] == cs[:-1]]
    pair_a = np.flatnonzero(same_next)  # half-edge i pairs with i + 1
    lone = np.flatnonzero(~same_next & ~same_prev)  # border edges
    a = np.concatenate([order[pair_a], order[lone]])
    b = np.concatenate([order[pair_a + 1], np.full(len(lone), -1)])
    has_b = b >= 0
    bb = np.where(has_b, b, 0)
    edges = first[key[a]]  # back to original vertex ids (one representative per position)
    efaces = np.stack([fid[a], np.where(has_b, fid[bb], -1)], 1)
    eopp = np.stack([first[opp[a]], np.where(has_b, first[opp[bb]], -1)], 1)
    return (
        torch.as_tensor(edges, dtype=torch.int64),
        torch.as_tensor(efaces, dtype=torch.int64),
        torch.as_tensor(eopp, dtype=torch.int64),
    )


def _closed_orientation(vertices: torch.Tensor, faces: torch.Tensor) -> int:
    """+1 (-1) if the mesh is closed and consistently oriented with outward (inward) face normals,
    0 otherwise.

    Closed and consistent: after welding coincident vertices, every directed half-edge occurs once
    and so does its reverse, so every edge joins exactly two faces that traverse it in opposite
    directions.  Such a surface bounds a volume, whose sign gives the orientation.
    """
    if faces.shape[0] == 0:
        return 0
    v = vertices.double().numpy()
    _, weld = np.unique(v.round(9), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    f = weld[faces.numpy()]
    n = int(weld.max()) + 1
    he = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    if np.any(he[:, 0] == he[:, 1]):
        return 0
    code = he[:, 0].astype(np.int64) * n + he[:, 1]
    if len(np.unique(code)) != len(code) or not np.isin(he[:, 1].astype(np.int64) * n + he[:, 0], code).all():
        return 0
    p = v[faces.numpy()]
    volume = float(np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum())
    return int(np.sign(volume))


@dataclass(frozen=True)
class MeshBatch:
    """Several meshes packed into padded tensors, indexed by object index ``0..M-1``.

    Padding faces are ``(0, 0, 0)`` (degenerate: they cover no pixel) and padding edges ``(0, 0)``
    with no adjacent face; ``face_valid``/``edge_valid`` mark the real ones.

    Attributes:
        vertices: ``(M, Vmax, 3)`` metres.
        vertex_colors: ``(M, Vmax, 3)`` in [0, 1].
        vertex_normals: ``(M, Vmax, 3)`` unit, area-weighted.
        faces: ``(M, Fmax, 3)`` int64.
        face_valid: ``(M, Fmax)`` bool.
        edges: ``(M, Emax, 2)`` int64 vertex ids of undirected edges.
        edge_opposite: ``(M, Emax, 2)`` the third vertex of the (up to) two faces on each edge,
            ``-1`` where the edge borders one face only.
        edge_valid: ``(M, Emax)`` bool.
        num_vertices, num_faces: ``(M,)`` int64.
        names: mesh names, in index order.
        closed_sign: ``(M,)`` +1 / -1 for a closed mesh with outward / inward face winding, 0 for
            an open one (the renderer skips back faces of closed meshes, which never show).
        bounds: ``(M, 2, 3)`` axis-aligned box (min, max) of each mesh's vertices.
    """

    vertices: torch.Tensor
    vertex_colors: torch.Tensor
    vertex_normals: torch.Tensor
    faces: torch.Tensor
    face_valid: torch.Tensor
    edges: torch.Tensor
    edge_opposite: torch.Tensor
    edge_valid: torch.Tensor
    num_vertices: torch.Tensor
    num_faces: torch.Tensor
    names: Tuple[str, ...]
    closed_sign: Optional[torch.Tensor] = None
    bounds: Optional[torch.Tensor] = None
    _cache: Dict[Tuple[str, str], "MeshBatch"] = field(default_factory=dict, compare=False, repr=False)
    _derived: Dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def vertices_and_normals(self) -> torch.Tensor:
        """``(M, 2 * Vmax, 3)``: the vertices, then the vertex normals (cached), so that one gather
        and one batched matmul pose both."""
        hit = self._derived.get("vertices_and_normals")
        if hit is None:
            hit = torch.cat([self.vertices, self.vertex_normals], 1)
            self._derived["vertices_and_normals"] = hit
        return hit

    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device: Union[str, torch.device], dtype: torch.dtype = torch.float32) -> "MeshBatch":
        """This batch on ``device`` with float tensors in ``dtype``; copies are cached per target."""
        device = torch.device(device)
        if self.vertices.device == device and self.vertices.dtype == dtype:
            return self
        key = (str(device), str(dtype))
        hit = self._cache.get(key)
        if hit is None:
            hit = MeshBatch(
                vertices=self.vertices.to(device, dtype),
                vertex_colors=self.vertex_colors.to(device, dtype),
                vertex_normals=self.vertex_normals.to(device, dtype),
                faces=self.faces.to(device),
                face_valid=self.face_valid.to(device),
                edges=self.edges.to(device),
                edge_opposite=self.edge_opposite.to(device),
                edge_valid=self.edge_valid.to(device),
                num_vertices=self.num_vertices.to(device),
                num_faces=self.num_faces.to(device),
                names=self.names,
                closed_sign=None if self.closed_sign is None else self.closed_sign.to(device, dtype),
                bounds=None if self.bounds is None else self.bounds.to(device, dtype),
            )
            self._cache[key] = hit
        return hit


def pack_meshes(
    meshes: Sequence[Mesh], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32
) -> MeshBatch:
    """Pack meshes into a :class:`MeshBatch`; mesh ``i`` gets object index ``i``.

    Edge adjacency (for silhouette edges) and vertex normals are computed here, once.
    """
    if len(meshes) == 0:
        raise ValueError("pack_meshes: need at least one mesh")
    m = len(meshes)
    vmax = max(x.num_vertices for x in meshes)
    fmax = max(x.num_faces for x in meshes)
    topo = [_edge_topology(x.vertices, x.faces) for x in meshes]
    emax = max(max(t[0].shape[0] for t in topo), 1)
    verts = torch.zeros(m, vmax, 3, dtype=torch.float32)
    cols = torch.zeros(m, vmax, 3, dtype=torch.float32)
    norms = torch.zeros(m, vmax, 3, dtype=torch.float32)
    faces = torch.zeros(m, fmax, 3, dtype=torch.int64)
    fvalid = torch.zeros(m, fmax, dtype=torch.bool)
    edges = torch.zeros(m, emax, 2, dtype=torch.int64)
    eopp = torch.full((m, emax, 2), -1, dtype=torch.int64)
    evalid = torch.zeros(m, emax, dtype=torch.bool)
    for i, (x, (e, _, o)) in enumerate(zip(meshes, topo)):
        verts[i, : x.num_vertices] = x.vertices.float()
        cols[i, : x.num_vertices] = x.vertex_colors.float()
        norms[i, : x.num_vertices] = _vertex_normals(x.vertices.float(), x.faces)
        faces[i, : x.num_faces] = x.faces
        fvalid[i, : x.num_faces] = True
        edges[i, : e.shape[0]] = e
        eopp[i, : e.shape[0]] = o
        evalid[i, : e.shape[0]] = True
    batch = MeshBatch(
        vertices=verts,
        vertex_colors=cols,
        vertex_normals=norms,
        faces=faces,
        face_valid=fvalid,
        edges=edges,
        edge_opposite=eopp,
        edge_valid=evalid,
        num_vertices=torch.tensor([x.num_vertices for x in meshes], dtype=torch.int64),
        num_faces=torch.tensor([x.num_faces for x in meshes], dtype=torch.int64),
        names=tuple(x.name for x in meshes),
        closed_sign=torch.tensor([float(_closed_orientation(x.vertices, x.faces)) for x in meshes]),
        bounds=torch.stack(
            [
                torch.stack([x.vertices.float().amin(0), x.vertices.float().amax(0)])
                if x.num_vertices
                else torch.zeros(2, 3)
                for x in meshes
            ]
        ),
    )
    return batch.to(device, dtype)


def object_mesh(obj: ObjectInfo) -> Mesh:
    """A registry object as rendered: model frame, metres, its appearance's vertex colours
    (:meth:`pose6d_ros.registry.ObjectInfo.load_mesh`)."""
    tm = obj.load_mesh()
    return Mesh.from_arrays(np.asarray(tm.vertices, np.float32), np.asarray(tm.faces),
                            np.asarray(tm.visual.vertex_colors)[:, :3] / 255.0, name=obj.name)


def pack_objects(objects: Sequence[ObjectInfo], device: Union[str, torch.device] = "cpu",
                 max_faces: Optional[int] = None) -> MeshBatch:
    """Registry objects packed for the renderer: mesh ``i`` (the renderer's object index ``i``) is
    ``objects[i]``. With ``max_faces``, a mesh with more faces is decimated (:func:`decimate`)."""
    meshes = [object_mesh(o) for o in objects]
    if max_faces:
        meshes = [decimate(m, max_faces) if m.num_faces > max_faces else m for m in meshes]
    return pack_meshes(meshes, device=device)
