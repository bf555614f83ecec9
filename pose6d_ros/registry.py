"""The object registry: ids, names, meshes, diameters, symmetries and keypoints of known objects.

A registry is read from a YAML file in ``config/`` (:meth:`ObjectRegistry.from_yaml`) or from a BOP
``models_info.json`` (:meth:`ObjectRegistry.from_bop_models_info`). Everything is in **metres** and in
the **model frame**::

    x_model = (x_file - origin) * UNIT_TO_M[units] * scale

Symmetries follow BOP semantics (``symmetries_discrete``: 4x4 transforms ``T`` with
``T @ x_model`` indistinguishable from ``x_model``; ``symmetries_continuous``: an axis and an offset
point), but translations are in metres, not millimetres.

YAML format (paths relative to the YAML file, or ``pybullet_data://<path>`` into the pybullet_data
package; never absolute)::

    objects:
      - id: 1
        name: duck
        mesh: pybullet_data://duck.obj
        units: m            # m | cm | mm: the unit of the mesh file's coordinates
        scale: 0.06         # extra factor after the unit (default 1)
        origin: [0, 0, 0]   # optional, file units: the point that becomes the model origin
        diameter: 0.10      # optional (m); computed from the mesh when absent
        symmetries_discrete: [[16 numbers, row-major 4x4]]            # optional
        symmetries_continuous: [{axis: [0, 0, 1], offset: [0, 0, 0]}]  # optional (offset in m)
        keypoints: [[x, y, z] x 9]                                     # optional (m)
        appearance: {kind: file}   # how the mesh gets its colours, see ``apply_appearance``
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Sequence

import numpy as np
import torch

from pose6d_ros.geometry.keypoints import box_keypoints

UNIT_TO_M: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001}
PYBULLET_SCHEME = "pybullet_data://"
APPEARANCE_KINDS = ("file", "regions", "bands")


class RegistryError(ValueError):
    """A registry file is invalid; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class ContinuousSymmetry:
    """A continuous rotational symmetry: any rotation about ``axis`` through ``offset``.

    Attributes:
        axis: ``(3,)`` unit axis in the model frame.
        offset: ``(3,)`` a point on the axis, metres, model frame.
    """

    axis: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True, eq=False)
class ObjectInfo:
    """One registered object.

    Attributes:
        id: the object's id (BOP ``obj_id``).
        name: unique human-readable name (e.g. ``"duck"``).
        mesh_path: resolved path of the mesh file.
        units: unit of the mesh file's coordinates: ``"m"``, ``"cm"`` or ``"mm"``.
        scale: extra scale applied after the unit conversion.
        diameter: metres; the largest distance between two mesh vertices.
        symmetries_discrete: ``(S, 4, 4)`` BOP-style symmetry transforms, translation in metres.
        symmetries_continuous: continuous symmetries (axis, offset in metres).
        keypoints: ``(9, 3)`` model-frame keypoints in metres: the 8 tight-box corners in
            ``itertools.product((xmin, xmax), (ymin, ymax), (zmin, zmax))`` order, then the box centre.
        origin: ``(3,)`` point of the mesh file (file units) that is the model origin.
        appearance: how the mesh is coloured (see :func:`apply_appearance`).
        mesh_uri: the mesh reference as written in the source file (for round trips).
    """

    id: int
    name: str
    mesh_path: Path
    units: str
    scale: float
    diameter: float
    symmetries_discrete: np.ndarray
    symmetries_continuous: tuple[ContinuousSymmetry, ...]
    keypoints: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    appearance: Mapping[str, Any] = field(default_factory=lambda: {"kind": "file"})
    mesh_uri: str = ""

    @property
    def metres_per_unit(self) -> float:
        """Factor from (origin-shifted) file coordinates to metres."""
        return UNIT_TO_M[self.units] * self.scale

    @property
    def is_symmetric(self) -> bool:
        """True if the object has any discrete or continuous symmetry (evaluate with ADD-S)."""
        return len(self.symmetries_discrete) > 0 or len(self.symmetries_continuous) > 0

    def load_mesh(self) -> "trimesh.Trimesh":  # noqa: F821
        """The mesh in metres, in the model frame, with per-vertex colours ``visual.vertex_colors``.

        Cached per (file, transform, appearance); a copy is returned so callers may modify it.
        """
        return _load_model_mesh(
            str(self.mesh_path), tuple(np.asarray(self.origin, float).tolist()), self.metres_per_unit,
            json.dumps(dict(self.appearance), sort_keys=True),
        ).copy()

    def model_vertices(self) -> np.ndarray:
        """``(N, 3)`` float64 model-frame vertices in metres (the raw file's vertex set, no colouring)."""
        raw = _load_raw_vertices(str(self.mesh_path))
        return (raw - np.asarray(self.origin, float)) * self.metres_per_unit


class ObjectRegistry:
    """An ordered set of :class:`ObjectInfo`, looked up by id or name.

    ``index_of(id)`` gives a stable contiguous index (position in ascending id order) used for
    class-conditional lookups such as the CIN table (Eq. 4).

    Example:
        >>> reg = ObjectRegistry.from_yaml("config/objects_lm_lite.yaml")  # doctest: +SKIP
        >>> reg.get("duck").diameter, reg.resolve("1").name  # doctest: +SKIP
    """

    def __init__(self, objects: Sequence[ObjectInfo], source: str = "<memory>") -> None:
        self._source = source
        objs = sorted(objects, key=lambda o: o.id)
        by_id: dict[int, ObjectInfo] = {}
        by_name: dict[str, ObjectInfo] = {}
        for o in objs:
            if o.id in by_id:
                raise RegistryError(f"{source}: objects: duplicate id {o.id}")
            if o.name in by_name:
                raise RegistryError(f"{source}: objects: duplicate name {o.name!r}")
            by_id[o.id] = o
            by_name[o.name] = o
        self._objects = objs
        self._by_id = by_id
        self._by_name = by_name
        self._index = {o.id: i for i, o in enumerate(objs)}

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[ObjectInfo]:
        return iter(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._by_id or key in self._by_name

    @property
    def ids(self) -> list[int]:
        """Object ids in ascending order (the order of :meth:`index_of`)."""
        return [o.id for o in self._objects]

    @property
    def names(self) -> list[str]:
        """Object names in ascending id order."""
        return [o.name for o in self._objects]

    def get(self, key: int | str) -> ObjectInfo:
        """Look an object up by id (``int``) or by name (``str``); ``KeyError`` if unknown."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if int(key) in self._by_id:
                return self._by_id[int(key)]
        elif isinstance(key, str) and key in self._by_name:
            return self._by_name[key]
        raise KeyError(f"{self._source}: no object {key!r}; known: {self.names}")

    def resolve(self, class_id: str) -> ObjectInfo:
        """Resolve a detector's class id: an object name, or a numeric string such as ``"3"``."""
        key = str(class_id).strip()
        if key in self._by_name:
            return self._by_name[key]
        try:
            return self.get(int(key))
        except ValueError:
            raise KeyError(f"{self._source}: class id {class_id!r} is neither a name nor an id; "
                           f"known: {self.names}") from None

    def index_of(self, obj_id: int) -> int:
        """Contiguous index ``0..len-1`` of ``obj_id`` (ascending id order)."""
        if obj_id not in self._index:
            raise KeyError(f"{self._source}: no object id {obj_id}; known: {self.ids}")
        return self._index[obj_id]

    def fingerprint(self, ids: Sequence[int] | None = None) -> str:
        """A hex digest of what renders the objects ``ids`` (default all): each one's mesh file bytes, units,
        scale, origin, appearance, keypoints and diameter. Caches of rendered data key on it, so an edited
        mesh or registry entry is never served a stale render."""
        h = hashlib.sha1()
        for oid in (self.ids if ids is None else ids):
            o = self.get(int(oid))
            h.update(json.dumps([o.id, o.name, o.units, float(o.scale), float(o.diameter),
                                 np.asarray(o.origin, float).tolist(), np.asarray(o.keypoints, float).tolist(),
                                 dict(o.appearance)], sort_keys=True, default=str).encode())
            h.update(_file_sha1(str(o.mesh_path)).encode())
        return h.hexdigest()

    def keypoints(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """``(N, 9, 3)`` keypoints (metres) of ``ids`` (default: all, in index order)."""
        objs = self._objects if ids is None else [self.get(int(i)) for i in ids]
        return np.stack([o.keypoints for o in objs])

    def diameters(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """``(N,)`` diameters in metres of ``ids`` (default: all, in index order)."""
        objs = self._objects if ids is None else [self.get(int(i)) for i in ids]
        return np.array([o.diameter for o in objs])

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ObjectRegistry":
        """Read a registry YAML (format in the module docstring); errors name file and field."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found")
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
            raise RegistryError(f"{path}: objects: expected a top-level list 'objects'")
        objs = [_parse_entry(e, path, i) for i, e in enumerate(doc["objects"])]
        return cls(objs, source=str(path))

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the registry as YAML; mesh paths are written relative to ``path`` (or as
        ``pybullet_data://`` references) so the file holds no absolute paths."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = []
        for o in self._objects:
            if o.mesh_uri.startswith(PYBULLET_SCHEME):
                mesh = o.mesh_uri
            else:
                mesh = os.path.relpath(Path(o.mesh_path).resolve(), path.parent.resolve())
            e: dict[str, Any] = {"id": int(o.id), "name": o.name, "mesh": mesh, "units": o.units,
                                 "scale": float(o.scale)}
            if np.any(np.asarray(o.origin) != 0):
                e["origin"] = _round(o.origin)
            e["diameter"] = float(round(o.diameter, 9))
            if len(o.symmetries_discrete):
                e["symmetries_discrete"] = [_round(s.reshape(-1)) for s in o.symmetries_discrete]
            if o.symmetries_continuous:
                e["symmetries_continuous"] = [{"axis": _round(s.axis), "offset": _round(s.offset)}
                                              for s in o.symmetries_continuous]
            e["keypoints"] = [_round(k) for k in o.keypoints]
            e["appearance"] = dict(o.appearance)
            entries.append(e)
        with open(path, "w", encoding="utf-8") as f:
            f.write("# pose6d_ros object registry (see pose6d_ros/registry.py). Units: metres.\n")
            yaml.safe_dump({"objects": entries}, f, sort_keys=False, default_flow_style=None, width=120)

    @classmethod
    def from_bop_models_info(cls, models_info_path: str | os.PathLike,
                             models_dir: str | os.PathLike | None = None) -> "ObjectRegistry":
        """Read a BOP ``models_info.json`` (millimetres) with meshes ``obj_XXXXXX.ply`` in ``models_dir``
        (default: the JSON's folder). Names are ``obj_XXXXXX``; everything is converted to metres."""
        info_path = Path(models_info_path)
        if not info_path.is_file():
            raise RegistryError(f"{info_path}: models_info file not found")
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        mdir = Path(models_dir) if models_dir is not None else info_path.parent
        objs = []
        for key, rec in info.items():
            where = f"{info_path}: [{key!r}]"
            try:
                oid = int(key)
            except ValueError:
                raise RegistryError(f"{where}: object key must be an integer id") from None
            entry: dict[str, Any] = {"id": oid, "name": rec.get("name", f"obj_{oid:06d}"),
                                     "mesh": os.path.relpath(mdir / f"obj_{oid:06d}.ply", info_path.parent),
                                     "units": "mm", "scale": 1.0}
            if "diameter" in rec:
                entry["diameter"] = float(rec["diameter"]) / 1000.0
            if "symmetries_discrete" in rec:
                syms = []
                for j, s in enumerate(rec["symmetries_discrete"]):
                    m = _as_array(s, (16,), f"{where}.symmetries_discrete[{j}]").reshape(4, 4).copy()
                    m[:3, 3] /= 1000.0
                    syms.append(m.reshape(-1).tolist())
                entry["symmetries_discrete"] = syms
            if "symmetries_continuous" in rec:
                entry["symmetries_continuous"] = [
                    {"axis": s["axis"], "offset": (np.asarray(s["offset"], float) / 1000.0).tolist()}
                    for s in rec["symmetries_continuous"]]
            objs.append(_parse_entry(entry, info_path, len(objs), label=where))
        return cls(objs, source=str(info_path))


# ---------------------------------------------------------------------- parsing


def _file_sha1(path: str) -> str:
    st = os.stat(path)
    return _file_sha1_of_version(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _file_sha1_of_version(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_mesh_uri(uri: str, base_dir: Path) -> Path:
    """Turn a registry mesh reference into a path: ``pybullet_data://x.obj`` or a path relative to
    ``base_dir`` (absolute paths are accepted when reading but never written)."""
    if uri.startswith(PYBULLET_SCHEME):
        import pybullet_data

        return Path(pybullet_data.getDataPath()) / uri[len(PYBULLET_SCHEME):]
    p = Path(uri)
    return p if p.is_absolute() else (base_dir / p)


def _parse_entry(e: Any, path: Path, i: int, label: str | None = None) -> ObjectInfo:
    where = label or f"{path}: objects[{i}]"
    if not isinstance(e, dict):
        raise RegistryError(f"{where}: expected a mapping")
    for req in ("id", "name", "mesh"):
        if req not in e:
            raise RegistryError(f"{where}.{req}: missing")
    try:
        oid = int(e["id"])
    except (TypeError, ValueError):
        raise RegistryError(f"{where}.id: expected an integer, got {e['id']!r}") from None
    name = str(e["name"])
    if not name or name.strip() != name:
        raise RegistryError(f"{where}.name: empty or has surrounding spaces: {name!r}")
    units = e.get("units", "m")
    if units not in UNIT_TO_M:
        raise RegistryError(f"{where}.units: expected one of {sorted(UNIT_TO_M)}, got {units!r}")
    try:
        scale = float(e.get("scale", 1.0))
    except (TypeError, ValueError):
        raise RegistryError(f"{where}.scale: expected a number, got {e.get('scale')!r}") from None
    if not scale > 0:
        raise RegistryError(f"{where}.scale: must be positive, got {scale}")
    uri = str(e["mesh"])
    mesh_path = resolve_mesh_uri(uri, path.parent)
    if not mesh_path.is_file():
        raise RegistryError(f"{where}.mesh: mesh file not found: {uri!r} (resolved to {mesh_path})")
    origin = _as_array(e.get("origin", [0, 0, 0]), (3,), f"{where}.origin")
    appearance = e.get("appearance", {"kind": "file"})
    if not isinstance(appearance, dict) or appearance.get("kind") not in APPEARANCE_KINDS:
        raise RegistryError(f"{where}.appearance: expected a mapping with kind in {APPEARANCE_KINDS}, "
                            f"got {appearance!r}")

    syms_d = e.get("symmetries_discrete", []) or []
    if not isinstance(syms_d, list):
        raise RegistryError(f"{where}.symmetries_discrete: expected a list of 4x4 matrices")
    mats = []
    for j, s in enumerate(syms_d):
        a = np.asarray(s, dtype=float)
        if a.shape == (16,):
            a = a.reshape(4, 4)
        if a.shape != (4, 4):
            raise RegistryError(f"{where}.symmetries_discrete[{j}]: expected 16 numbers or a 4x4 matrix, "
                                f"got shape {a.shape}")
        r = a[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or not np.allclose(a[3], [0, 0, 0, 1]):
            raise RegistryError(f"{where}.symmetries_discrete[{j}]: not a rigid transform")
        mats.append(a)
    syms_c_raw = e.get("symmetries_continuous", []) or []
    syms_c = []
    for j, s in enumerate(syms_c_raw):
        if not isinstance(s, dict) or "axis" not in s:
            raise RegistryError(f"{where}.symmetries_continuous[{j}]: expected {{axis, offset}}")
        axis = _as_array(s["axis"], (3,), f"{where}.symmetries_continuous[{j}].axis")
        n = np.linalg.norm(axis)
        if n < 1e-9:
            raise RegistryError(f"{where}.symmetries_continuous[{j}].axis: zero vector")
        offset = _as_array(s.get("offset", [0, 0, 0]), (3,), f"{where}.symmetries_continuous[{j}].offset")
        syms_c.append(ContinuousSymmetry(axis=axis / n, offset=offset))

    mpu = UNIT_TO_M[units] * scale
    need_geometry = "diameter" not in e or "keypoints" not in e
    verts = None
    if need_geometry:
        try:
            verts = (_load_raw_vertices(str(mesh_path)) - origin) * mpu
        except Exception as exc:  # trimesh raises many types on a corrupt file
            raise RegistryError(f"{where}.mesh: cannot read {mesh_path}: {exc}") from exc
    if "diameter" in e:
        diameter = float(e["diameter"])
        if not diameter > 0:
            raise RegistryError(f"{where}.diameter: must be positive, got {diameter}")
    else:
        diameter = mesh_diameter(verts)
    if "keypoints" in e:
        kps = _as_array(e["keypoints"], (9, 3), f"{where}.keypoints")
    else:
        kps = box_keypoints_np(verts)
    return ObjectInfo(
        id=oid, name=name, mesh_path=mesh_path, units=units, scale=scale, diameter=diameter,
        symmetries_discrete=np.asarray(mats, dtype=float).reshape(-1, 4, 4),
        symmetries_continuous=tuple(syms_c), keypoints=kps, origin=origin,
        appearance=dict(appearance), mesh_uri=uri,
    )


def _as_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise RegistryError(f"{where}: expected numbers of shape {shape}, got {value!r}") from None
    if a.shape != shape:
        raise RegistryError(f"{where}: expected shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise RegistryError(f"{where}: contains non-finite values")
    return a


def _round(a: Any) -> list[float]:
    return [float(round(float(x), 9)) + 0.0 for x in np.asarray(a).reshape(-1)]


@dataclass
class RunObjects:
    """The objects a model is trained on or serves, in model-row order: row ``i`` is ``ids[i]``
    (the :class:`pose6d_ros.models.ModelCard` records the order)."""

    registry: ObjectRegistry
    ids: List[int]

    @property
    def keypoints(self) -> torch.Tensor:
        """``(N, K, 3)`` metres, model-row order."""
        return torch.as_tensor(self.registry.keypoints(self.ids), dtype=torch.float32)

    def extent_points(self, max_points: int = 128) -> torch.Tensor:
        """``(N, P, 3)`` metres: convex-hull vertices of each mesh (their projection spans the same 2D
        box as the silhouette), at most ``max_points`` per object, repeated up to a common ``P``."""
        sets = []
        for oid in self.ids:
            v = hull_vertices(self.registry.get(oid).model_vertices())
            if len(v) > max_points:
                v = v[np.random.default_rng(0).choice(len(v), max_points, replace=False)]
            sets.append(v)
        P = max(len(v) for v in sets)
        return torch.as_tensor(np.stack([np.resize(v, (P, 3)) for v in sets]), dtype=torch.float32)

    def row_lookup(self) -> torch.Tensor:
        """``registry.index_of -> model row`` as a tensor (``-1`` for objects not in the run)."""
        lut = torch.full((len(self.registry),), -1, dtype=torch.long)
        for row, oid in enumerate(self.ids):
            lut[self.registry.index_of(oid)] = row
        return lut


# ---------------------------------------------------------------------- geometry


def hull_vertices(vertices: np.ndarray) -> np.ndarray:
    """The convex-hull vertices of ``vertices`` ``(N, 3)`` (float64); all of them for degenerate
    (flat) point sets. Extremes of any linear function, distances included, lie among them."""
    from scipy.spatial import ConvexHull, QhullError

    v = np.asarray(vertices, dtype=float)
    try:
        return v[ConvexHull(v).vertices]
    except (QhullError, ValueError):
        return v


def mesh_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two of ``vertices`` ``(N, 3)``; the farthest pair lies on the
    convex hull, so only hull vertices are compared (exact, ``O(H^2)``)."""
    from scipy.spatial.distance import pdist

    v = hull_vertices(vertices)
    return float(pdist(v).max()) if len(v) > 1 else 0.0


def box_keypoints_np(vertices: np.ndarray, with_centroid: bool = True) -> np.ndarray:
    """``(9, 3)`` (or ``(8, 3)``) float64 tight-box keypoints of ``vertices`` ``(N, 3)``, in the order of
    docs/conventions.md (one definition: ``pose6d_ros.geometry.keypoints.box_keypoints``)."""
    v = torch.as_tensor(np.asarray(vertices, dtype=np.float64))
    return box_keypoints(v, with_centroid=with_centroid).numpy().astype(np.float64)


@functools.lru_cache(maxsize=256)
def _load_raw_vertices(path: str) -> np.ndarray:
    return np.asarray(_load_trimesh_file(path).vertices, dtype=np.float64).copy()


def _load_trimesh_file(path: str) -> "trimesh.Trimesh":  # noqa: F821
    import trimesh

    if not os.path.isfile(path):
        raise RegistryError(f"{path}: mesh file not found")
    try:
        m = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types on a malformed file, none naming it
        raise RegistryError(f"{path}: cannot read mesh ({type(exc).__name__}: {exc})") from exc
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise RegistryError(f"{path}: not a triangle mesh")
    return m


@functools.lru_cache(maxsize=128)
def _load_model_mesh(path: str, origin: tuple, mpu: float, appearance_json: str):
    import trimesh

    m = _load_trimesh_file(path)
    m = trimesh.Trimesh(vertices=m.vertices.copy(), faces=m.faces.copy(), visual=m.visual.copy(),
                        process=False)
    m.vertices = (np.asarray(m.vertices) - np.asarray(origin)) * mpu
    return apply_appearance(m, json.loads(appearance_json))


# ---------------------------------------------------------------------- appearance


def apply_appearance(mesh: "trimesh.Trimesh", appearance: Mapping[str, Any]) -> "trimesh.Trimesh":  # noqa: F821
    """Give ``mesh`` (model frame, metres) per-vertex colours from an appearance spec.

    Kinds:
        ``file``: the file's own colours; a texture is sampled at the vertices' UVs
            (``trimesh``'s ``to_color``); no colour at all gives mid grey.
        ``regions`` (``seed``, ``n``): ``n`` surface regions (Voronoi cells around farthest-point
            seeds), one saturated colour each, per face (faces are unshared so colours stay crisp).
            Makes an untextured, asymmetric shape's pose observable.
        ``bands`` (``axis``, ``center`` in metres, ``seed``, ``n``): colours that depend only on the
            height along ``axis`` and the distance to it, so they keep the shape's rotational
            symmetry (a colour pattern must not break a symmetry the registry declares).
    """
    import trimesh

    kind = appearance.get("kind", "file")
    if kind == "file":
        vis = mesh.visual
        if isinstance(vis, trimesh.visual.texture.TextureVisuals):
            try:
                colors = vis.to_color().vertex_colors
            except Exception:  # texture missing or unreadable: fall back to the material colour
                colors = np.tile([128, 128, 128, 255], (len(mesh.vertices), 1))
        else:
            colors = vis.vertex_colors if vis.kind is not None else \
                np.tile([128, 128, 128, 255], (len(mesh.vertices), 1))
        out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=np.asarray(colors, np.uint8))
        return out
    rng = np.random.default_rng(int(appearance.get("seed", 0)))
    n = int(appearance.get("n", 6))
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    centroids = v[f].mean(axis=1)
    if kind == "regions":
        seeds = _farthest_points(centroids, n, int(rng.integers(len(centroids))))
        d = np.linalg.norm(centroids[:, None] - centroids[seeds][None], axis=-1)
        label = np.argmin(d, axis=1)
    elif kind == "bands":
        axis = np.asarray(appearance.get("axis", [0, 0, 1]), float)
        axis = axis / np.linalg.norm(axis)
        rel = centroids - np.asarray(appearance.get("center", [0, 0, 0]), float)
        h = rel @ axis
        r = np.linalg.norm(rel - h[:, None] * axis, axis=1)
        hb = np.floor((h - h.min()) / max(np.ptp(h), 1e-9) * (n - 1e-6)).astype(int)
        rb = (r > np.median(r)).astype(int)
        label = hb * 2 + rb
    else:
        raise ValueError(f"appearance.kind: unknown {kind!r}")
    palette = _palette(int(label.max()) + 1, rng)
    fv = v[f].reshape(-1, 3)
    out = trimesh.Trimesh(vertices=fv, faces=np.arange(len(fv)).reshape(-1, 3), process=False)
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=np.repeat(palette[label], 3, axis=0))
    return out


def _farthest_points(points: np.ndarray, k: int, start: int) -> np.ndarray:
    k = min(k, len(points))
    idx = [start]
    d = np.linalg.norm(points - points[start], axis=1)
    for _ in range(k - 1):  # k is a handful of regions, not a hot path
        idx.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(points - points[idx[-1]], axis=1))
    return np.array(idx)


def _palette(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 4)`` uint8 distinct saturated colours (evenly spaced hues, shuffled, varied value)."""
    hues = (np.arange(n) / max(n, 1) + rng.random()) % 1.0
    rng.shuffle(hues)
    vals = 0.55 + 0.4 * (np.arange(n) % 2)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.85, val) for h, val in zip(hues, vals)])
    return np.concatenate([np.round(rgb * 255), np.full((n, 1), 255)], axis=1).astype(np.uint8)
