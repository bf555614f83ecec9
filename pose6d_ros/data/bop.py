"""BOP dataset I/O: paired ``load_*`` / ``save_*`` functions.

The on-disk format is the one of the BOP toolkit,
https://github.com/thodan/bop_toolkit/blob/master/docs/bop_datasets_format.md ::

    DATASET/
      camera.json                      dataset camera (``load_camera`` / ``save_camera``)
      models/models_info.json          per-object extents and symmetries (``load_models_info``)
      test_targets_bop19.json          evaluation targets (``load_targets``)
      SPLIT[_TYPE]/                    e.g. ``train``, ``test``, ``train_real``, ``train_pbr``
        SCENE_ID/                      6 digits
          scene_camera.json            per image: cam_K, depth_scale, [cam_R_w2c, cam_t_w2c], [cam_D: ours]
          scene_gt.json                per image: list of {cam_R_m2c, cam_t_m2c, obj_id}
          scene_gt_info.json           per image: list of {bbox_obj, bbox_visib, px_count_*, visib_fract}
          rgb/IM_ID.png|jpg            (``gray/`` is accepted when reading)
          depth/IM_ID.png              uint16, depth[mm] = value * depth_scale
          mask/IM_ID_GT_ID.png         full silhouette of one GT instance
          mask_visib/IM_ID_GT_ID.png   visible part of it

Records are dataclasses in **metres** (``docs/conventions.md``).  Millimetres exist only in the
files; the conversion lives in exactly one place, :func:`_mm_to_m` / :func:`_m_to_mm`, which
scale the *decimal* text by 10^±3 so that ``save_*`` followed by ``load_*`` returns bit-identical
floats (``repr`` of a metre value, with its decimal point moved, is what goes in the file).

Every write is atomic (temporary file in the same directory, then ``os.replace``).  Malformed
files raise :class:`BopFormatError`, whose message names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pose6d_ros._io import atomic_write_bytes

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "BopFormatError",
    "CameraRecord",
    "DatasetCamera",
    "GtRecord",
    "GtInfoRecord",
    "ModelInfo",
    "SceneRecord",
    "TargetRecord",
    "DetectionRecord",
    "BopInstance",
    "BopDataset",
    "split_dir",
    "list_splits",
    "list_scenes",
    "scene_dir",
    "load_scene_camera",
    "save_scene_camera",
    "load_scene_gt",
    "save_scene_gt",
    "load_scene_gt_info",
    "save_scene_gt_info",
    "load_scene",
    "save_scene",
    "iter_scenes",
    "load_models_info",
    "save_models_info",
    "load_camera",
    "save_camera",
    "load_targets",
    "save_targets",
    "load_detections",
    "save_detections",
    "rgb_path",
    "load_rgb",
    "save_rgb",
    "load_depth",
    "save_depth",
    "load_mask",
    "save_mask",
]

SCENE_CAMERA = "scene_camera.json"
SCENE_GT = "scene_gt.json"
SCENE_GT_INFO = "scene_gt_info.json"
MODELS_INFO = "models_info.json"
CAMERA = "camera.json"
TARGETS_BOP19 = "test_targets_bop19.json"
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_DIST_SIZES = (4, 5, 8)


class BopFormatError(ValueError):
    """A BOP file is malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------
# The unit boundary: the only place where millimetres become metres and back.
# ---------------------------------------------------------------------------------------------


def _mm_to_m(value: Union[int, Decimal, np.ndarray]) -> Union[float, np.ndarray]:
    """Millimetres (file) -> metres (code).

    Scalars are JSON numbers parsed as ``Decimal``/``int``; shifting the decimal point is exact and
    ``float(Decimal)`` rounds correctly, so this inverts :func:`_m_to_mm` bit for bit.  Arrays (depth
    maps already multiplied by their unit) are divided in floating point.
    """
    if isinstance(value, np.ndarray):
        return value / 1000.0
    return float(Decimal(value).scaleb(-3))


def _m_to_mm(value: float) -> "_Raw":
    """Metres (code) -> millimetres (file), as exact decimal text: ``repr`` with the point moved."""
    if not math.isfinite(float(value)):
        raise ValueError(f"non-finite number {value} cannot be written to a BOP file")
    return _Raw(_plain_decimal(Decimal(repr(float(value))).scaleb(3)))


# ---------------------------------------------------------------------------------------------
# JSON reading / writing helpers
# ---------------------------------------------------------------------------------------------


class _Raw(str):
    """Pre-formatted JSON number text."""


def _plain_decimal(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0")
        text = text + "0" if text.endswith(".") else text
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:  # pragma: no cover - depends on the file system
        raise BopFormatError(f"{path}: cannot read: {exc}") from exc
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BopFormatError(f"{path}: invalid JSON: {exc}") from exc


def _dump(obj: Any) -> str:
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, (int, np.integer)):
        return str(int(obj))
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if not math.isfinite(v):
            raise ValueError(f"non-finite number {v} cannot be written to a BOP file")
        return repr(v)
    if isinstance(obj, str):
        return json.dumps(obj)
    if obj is None:
        return "null"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_dump(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(_dump(v) for v in obj) + "]"
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` with one top-level entry per line (as the BOP toolkit does), atomically."""
    if isinstance(obj, Mapping):
        body = ",\n".join(f"  {json.dumps(str(k))}: {_dump(v)}" for k, v in obj.items())
        text = "{\n" + body + "\n}\n" if body else "{}\n"
    elif isinstance(obj, (list, tuple)):
        body = ",\n".join(f"  {_dump(v)}" for v in obj)
        text = "[\n" + body + "\n]\n" if body else "[]\n"
    else:
        text = _dump(obj) + "\n"
    _atomic_write_bytes(path, text.encode("utf-8"))


_atomic_write_bytes = atomic_write_bytes


def _get(d: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(d, dict):
        raise BopFormatError(f"{path}: {where}: expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise BopFormatError(f"{path}: {where}: missing key '{key}'")
    return d[key]


def _scalar(v: Any, path: Path, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise BopFormatError(f"{path}: {where}: expected a number, got {v!r}")
    out = float(v)
    if not math.isfinite(out):
        raise BopFormatError(f"{path}: {where}: non-finite value {v}")
    return out


def _scalar_mm(v: Any, path: Path, where: str) -> float:
    _scalar(v, path, where)
    return float(_mm_to_m(v))


def _int(v: Any, path: Path, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BopFormatError(f"{path}: {where}: expected an integer, got {v!r}")
    return int(v)


def _vector(v: Any, n: int, path: Path, where: str, mm: bool = False) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        got = f"{len(v)} numbers" if isinstance(v, list) else type(v).__name__
        raise BopFormatError(f"{path}: {where}: expected {n} numbers, got {got}")
    conv = _scalar_mm if mm else _scalar
    return np.array([conv(x, path, f"{where}[{i}]") for i, x in enumerate(v)], dtype=np.float64)


def _int_vector(v: Any, n: int, path: Path, where: str) -> Tuple[int, ...]:
    if not isinstance(v, list) or len(v) != n:
        got = f"{len(v)} numbers" if isinstance(v, list) else type(v).__name__
        raise BopFormatError(f"{path}: {where}: expected {n} integers, got {got}")
    return tuple(_int(x, path, f"{where}[{i}]") for i, x in enumerate(v))


def _id_key(k: str, path: Path, what: str) -> int:
    try:
        return int(k)
    except ValueError:
        raise BopFormatError(f"{path}: key '{k}' is not an integer {what}") from None


def _check_array(x: Any, shape: Tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite values")
    return arr


def _flat(a: np.ndarray) -> List[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float64).reshape(-1)]


# ---------------------------------------------------------------------------------------------
# Records (metres)
# ---------------------------------------------------------------------------------------------


@dataclass
class CameraRecord:
    """One image's camera (``scene_camera.json`` entry).

    Attributes:
        K: ``(3, 3)`` intrinsics, pixels (OpenCV convention).
        depth_unit: metres per unit of the depth PNG (BOP's ``depth_scale`` / 1000), or ``None``.
        R_w2c: ``(3, 3)`` world-to-camera rotation, or ``None``.
        t_w2c: ``(3,)`` world-to-camera translation in metres, or ``None``.
        D: OpenCV distortion coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``, or ``None`` for
            an undistorted image.  Not in the BOP spec: stored as ``cam_D`` (our extension, ignored
            by BOP tools), e.g. for images imported from a ROS bag.
    """

    K: np.ndarray
    depth_unit: Optional[float] = None
    R_w2c: Optional[np.ndarray] = None
    t_w2c: Optional[np.ndarray] = None
    D: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.K = _check_array(self.K, (3, 3), "CameraRecord.K")
        if self.depth_unit is not None:
            self.depth_unit = float(self.depth_unit)
            if not (math.isfinite(self.depth_unit) and self.depth_unit > 0):
                raise ValueError(f"CameraRecord.depth_unit must be finite and > 0, got {self.depth_unit}")
        if (self.R_w2c is None) != (self.t_w2c is None):
            raise ValueError("CameraRecord: R_w2c and t_w2c must be given together")
        if self.R_w2c is not None:
            self.R_w2c = _check_array(self.R_w2c, (3, 3), "CameraRecord.R_w2c")
            self.t_w2c = _check_array(self.t_w2c, (3,), "CameraRecord.t_w2c")
        if self.D is not None:
            n = np.asarray(self.D).size
            if n not in _DIST_SIZES:
                raise ValueError(f"CameraRecord.D: expected {' or '.join(map(str, _DIST_SIZES))} coefficients, got {n}")
            self.D = _check_array(np.asarray(self.D).reshape(-1), (n,), "CameraRecord.D")


@dataclass
class GtRecord:
    """One ground-truth instance (``scene_gt.json`` entry): ``x_cam = R @ x_model + t``.

    Attributes:
        obj_id: BOP object id.
        R: ``(3, 3)`` model-to-camera rotation.
        t: ``(3,)`` model-to-camera translation, metres.
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        self.obj_id = int(self.obj_id)
        self.R = _check_array(self.R, (3, 3), "GtRecord.R")
        self.t = _check_array(self.t, (3,), "GtRecord.t")


@dataclass
class GtInfoRecord:
    """One instance's 2D statistics (``scene_gt_info.json`` entry).

    Boxes are BOP's ``(x, y, w, h)`` in integer pixels; ``(-1, -1, -1, -1)`` when empty.
    """

    bbox_obj: Tuple[int, int, int, int]
    bbox_visib: Tuple[int, int, int, int]
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float

    def __post_init__(self) -> None:
        for name in ("bbox_obj", "bbox_visib"):
            box = tuple(int(x) for x in getattr(self, name))
            if len(box) != 4:
                raise ValueError(f"GtInfoRecord.{name}: expected 4 integers (x, y, w, h), got {box}")
            setattr(self, name, box)
        self.px_count_all = int(self.px_count_all)
        self.px_count_valid = int(self.px_count_valid)
        self.px_count_visib = int(self.px_count_visib)
        self.visib_fract = float(self.visib_fract)
        if not math.isfinite(self.visib_fract):
            raise ValueError("GtInfoRecord.visib_fract: non-finite")


@dataclass
class SceneRecord:
    """The annotations of one scene, keyed by image id.

    Attributes:
        scene_id: scene id (the folder name, 6 digits on disk).
        cameras: ``{im_id: CameraRecord}``; its keys are the scene's images.
        gts: ``{im_id: [GtRecord, ...]}``, or ``None`` for an unlabeled scene (no ``scene_gt.json``).
        gt_infos: ``{im_id: [GtInfoRecord, ...]}`` parallel to ``gts``, or ``None``.
    """

    scene_id: int
    cameras: Dict[int, CameraRecord]
    gts: Optional[Dict[int, List[GtRecord]]] = None
    gt_infos: Optional[Dict[int, List[GtInfoRecord]]] = None

    @property
    def image_ids(self) -> List[int]:
        return sorted(self.cameras)


@dataclass
class ModelInfo:
    """One object's entry of ``models_info.json`` (metres).

    Attributes:
        obj_id: BOP object id.
        diameter: largest distance between two model vertices, metres.
        min: ``(3,)`` minimum corner of the model-frame box, metres.
        size: ``(3,)`` box extents, metres.
        symmetries_discrete: ``(4, 4)`` model-frame transforms (translation in metres).
        symmetries_continuous: ``(axis (3,), offset (3,) metres)`` pairs.
    """

    obj_id: int
    diameter: float
    min: np.ndarray
    size: np.ndarray
    symmetries_discrete: List[np.ndarray] = field(default_factory=list)
    symmetries_continuous: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.obj_id = int(self.obj_id)
        self.diameter = float(self.diameter)
        self.min = _check_array(self.min, (3,), "ModelInfo.min")
        self.size = _check_array(self.size, (3,), "ModelInfo.size")
        self.symmetries_discrete = [
            _check_array(s, (4, 4), f"ModelInfo.symmetries_discrete[{i}]")
            for i, s in enumerate(self.symmetries_discrete)
        ]
        self.symmetries_continuous = [
            (
                _check_array(a, (3,), f"ModelInfo.symmetries_continuous[{i}].axis"),
                _check_array(o, (3,), f"ModelInfo.symmetries_continuous[{i}].offset"),
            )
            for i, (a, o) in enumerate(self.symmetries_continuous)
        ]


@dataclass
class DatasetCamera:
    """The dataset-level ``camera.json``: ``K (3, 3)``, image size, depth unit (metres per unit)."""

    K: np.ndarray
    width: int
    height: int
    depth_unit: Optional[float] = None

    def __post_init__(self) -> None:
        self.K = _check_array(self.K, (3, 3), "DatasetCamera.K")
        self.width, self.height = int(self.width), int(self.height)


@dataclass(frozen=True)
class TargetRecord:
    """One entry of ``test_targets_bop19.json``."""

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int


@dataclass(frozen=True)
class DetectionRecord:
    """One 2D detection in BOP's default-detections format (``bbox`` is ``(x, y, w, h)`` pixels)."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    bbox: Tuple[float, float, float, float]
    time: float = -1.0


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def split_dir(root: PathLike, split: str, split_type: Optional[str] = None) -> Path:
    """``root/split`` or ``root/split_splittype`` (e.g. ``test_primesense``)."""
    name = f"{split}_{split_type}" if split_type else split
    return Path(root) / name


def list_splits(root: PathLike) -> List[str]:
    """Names of the folders of ``root`` that hold at least one BOP scene."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_scenes(p))


def scene_dir(split_path: PathLike, scene_id: int) -> Path:
    return Path(split_path) / f"{int(scene_id):06d}"


def list_scenes(split_path: PathLike) -> List[int]:
    """Sorted ids of the scene folders (6-digit names holding ``scene_camera.json``)."""
    split_path = Path(split_path)
    if not split_path.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in split_path.iterdir()
        if p.is_dir() and re.fullmatch(r"\d+", p.name) and (p / SCENE_CAMERA).is_file()
    )


# ---------------------------------------------------------------------------------------------
# scene_camera.json / scene_gt.json / scene_gt_info.json
# ---------------------------------------------------------------------------------------------


def load_scene_camera(path: PathLike) -> Dict[int, CameraRecord]:
    """Read ``scene_camera.json`` -> ``{im_id: CameraRecord}``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise BopFormatError(f"{path}: expected a JSON object keyed by image id")
    out: Dict[int, CameraRecord] = {}
    for k, entry in data.items():
        im_id = _id_key(k, path, "image id")
        where = f"image {k}"
        K = _vector(_get(entry, "cam_K", path, where), 9, path, f"{where}.cam_K").reshape(3, 3)
        depth_unit = None
        if "depth_scale" in entry:
            _scalar(entry["depth_scale"], path, f"{where}.depth_scale")
            depth_unit = float(_mm_to_m(entry["depth_scale"]))
        R = t = None
        if "cam_R_w2c" in entry or "cam_t_w2c" in entry:
            R = _vector(_get(entry, "cam_R_w2c", path, where), 9, path, f"{where}.cam_R_w2c").reshape(3, 3)
            t = _vector(_get(entry, "cam_t_w2c", path, where), 3, path, f"{where}.cam_t_w2c", mm=True)
        D = None
        if "cam_D" in entry:
            d = entry["cam_D"]
            if not isinstance(d, list) or len(d) not in _DIST_SIZES:
                raise BopFormatError(f"{path}: {where}.cam_D: expected 4, 5 or 8 numbers")
            D = _vector(d, len(d), path, f"{where}.cam_D")
        try:
            out[im_id] = CameraRecord(K=K, depth_unit=depth_unit, R_w2c=R, t_w2c=t, D=D)
        except ValueError as exc:
            raise BopFormatError(f"{path}: {where}: {exc}") from exc
    return out


def save_scene_camera(path: PathLike, cameras: Mapping[int, CameraRecord]) -> None:
    """Write ``{im_id: CameraRecord}`` as ``scene_camera.json``."""
    data: Dict[str, Any] = {}
    for im_id in sorted(cameras):
        cam = cameras[im_id]
        entry: Dict[str, Any] = {"cam_K": _flat(cam.K)}
        if cam.depth_unit is not None:
            entry["depth_scale"] = _m_to_mm(cam.depth_unit)
        if cam.R_w2c is not None:
            entry["cam_R_w2c"] = _flat(cam.R_w2c)
            entry["cam_t_w2c"] = [_m_to_mm(x) for x in _flat(cam.t_w2c)]
        if cam.D is not None:
            entry["cam_D"] = _flat(cam.D)
        data[str(int(im_id))] = entry
    _write_json(Path(path), data)


def _load_per_image(path: PathLike, parse) -> Dict[int, list]:
    """Read a ``{im_id: [instance, ...]}`` JSON file; ``parse(entry, path, where)`` makes each record."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise BopFormatError(f"{path}: expected a JSON object keyed by image id")
    out: Dict[int, list] = {}
    for k, entries in data.items():
        im_id = _id_key(k, path, "image id")
        if not isinstance(entries, list):
            raise BopFormatError(f"{path}: image {k}: expected a list of instances")
        out[im_id] = [parse(e, path, f"image {k}, instance {i}") for i, e in enumerate(entries)]
    return out


def _parse_gt(e: Any, path: Path, where: str) -> GtRecord:
    R = _vector(_get(e, "cam_R_m2c", path, where), 9, path, f"{where}.cam_R_m2c").reshape(3, 3)
    t = _vector(_get(e, "cam_t_m2c", path, where), 3, path, f"{where}.cam_t_m2c", mm=True)
    obj_id = _int(_get(e, "obj_id", path, where), path, f"{where}.obj_id")
    return GtRecord(obj_id=obj_id, R=R, t=t)


def load_scene_gt(path: PathLike) -> Dict[int, List[GtRecord]]:
    """Read ``scene_gt.json`` -> ``{im_id: [GtRecord, ...]}`` (translations in metres)."""
    return _load_per_image(path, _parse_gt)


def save_scene_gt(path: PathLike, gts: Mapping[int, Sequence[GtRecord]]) -> None:
    """Write ``{im_id: [GtRecord, ...]}`` as ``scene_gt.json`` (translations in mm)."""
    data = {
        str(int(im_id)): [
            {
                "cam_R_m2c": _flat(g.R),
                "cam_t_m2c": [_m_to_mm(x) for x in _flat(g.t)],
                "obj_id": int(g.obj_id),
            }
            for g in gts[im_id]
        ]
        for im_id in sorted(gts)
    }
    _write_json(Path(path), data)


_GT_INFO_INTS = ("px_count_all", "px_count_valid", "px_count_visib")


def _parse_gt_info(e: Any, path: Path, where: str) -> GtInfoRecord:
    kw: Dict[str, Any] = {
        b: _int_vector(_get(e, b, path, where), 4, path, f"{where}.{b}") for b in ("bbox_obj", "bbox_visib")
    }
    for name in _GT_INFO_INTS:
        kw[name] = _int(_get(e, name, path, where), path, f"{where}.{name}")
    kw["visib_fract"] = _scalar(_get(e, "visib_fract", path, where), path, f"{where}.visib_fract")
    return GtInfoRecord(**kw)


def load_scene_gt_info(path: PathLike) -> Dict[int, List[GtInfoRecord]]:
    """Read ``scene_gt_info.json`` -> ``{im_id: [GtInfoRecord, ...]}``."""
    return _load_per_image(path, _parse_gt_info)


def save_scene_gt_info(path: PathLike, infos: Mapping[int, Sequence[GtInfoRecord]]) -> None:
    """Write ``{im_id: [GtInfoRecord, ...]}`` as ``scene_gt_info.json``."""
    data = {
        str(int(im_id)): [
            {
                "bbox_obj": list(r.bbox_obj),
                "bbox_visib": list(r.bbox_visib),
                "px_count_all": r.px_count_all,
                "px_count_valid": r.px_count_valid,
                "px_count_visib": r.px_count_visib,
                "visib_fract": float(r.visib_fract),
            }
            for r in infos[im_id]
        ]
        for im_id in sorted(infos)
    }
    _write_json(Path(path), data)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def load_scene(split_path: PathLike, scene_id: int) -> SceneRecord:
    """Read one scene's JSON files (images are read on demand with :func:`load_rgb` & co).

    ``scene_gt.json`` and ``scene_gt_info.json`` are optional (unlabeled splits).  Raises
    :class:`BopFormatError` if their image ids or instance counts disagree with each other or with
    ``scene_camera.json``.
    """
    d = scene_dir(split_path, scene_id)
    cam_path = d / SCENE_CAMERA
    if not cam_path.is_file():
        raise FileNotFoundError(f"{cam_path}: no such file (is {d} a BOP scene?)")
    cameras = load_scene_camera(cam_path)
    gts = gt_infos = None
    if (d / SCENE_GT).is_file():
        gts = load_scene_gt(d / SCENE_GT)
        extra = sorted(set(gts) - set(cameras))
        if extra:
            raise BopFormatError(f"{d / SCENE_GT}: image ids {extra[:5]} have no entry in {SCENE_CAMERA}")
    if (d / SCENE_GT_INFO).is_file():
        gt_infos = load_scene_gt_info(d / SCENE_GT_INFO)
        if gts is not None:
            for im_id, infos in gt_infos.items():
                n_gt = len(gts.get(im_id, []))
                if len(infos) != n_gt:
                    raise BopFormatError(
                        f"{d / SCENE_GT_INFO}: image {im_id}: {len(infos)} entries, but {SCENE_GT} has {n_gt}"
                    )
    return SceneRecord(scene_id=int(scene_id), cameras=cameras, gts=gts, gt_infos=gt_infos)


def save_scene(
    split_path: PathLike,
    scene: SceneRecord,
    *,
    rgb: Optional[Mapping[int, np.ndarray]] = None,
    depth: Optional[Mapping[int, np.ndarray]] = None,
    masks: Optional[Mapping[int, Sequence[np.ndarray]]] = None,
    masks_visib: Optional[Mapping[int, Sequence[np.ndarray]]] = None,
    rgb_ext: str = ".png",
) -> Path:
    """Write a scene's JSON files and, optionally, its images; returns the scene folder.

    Args:
        split_path: the split folder (e.g. ``DATASET/train``).
        scene: annotations; ``gts``/``gt_infos`` of ``None`` are not written.
        rgb: ``{im_id: (H, W, 3) uint8 RGB}``.
        depth: ``{im_id: (H, W) float metres}``; needs the image's ``depth_unit``.
        masks, masks_visib: ``{im_id: [(H, W) bool/uint8, one per GT instance]}``.
        rgb_ext: ``".png"`` (lossless) or ``".jpg"``.
    """
    d = scene_dir(split_path, scene.scene_id)
    d.mkdir(parents=True, exist_ok=True)
    for im_id, img in (rgb or {}).items():
        save_rgb(split_path, scene.scene_id, im_id, img, ext=rgb_ext)
    for im_id, dep in (depth or {}).items():
        unit = scene.cameras[im_id].depth_unit
        if unit is None:
            raise ValueError(f"scene {scene.scene_id} image {im_id}: depth given but its camera has no depth_unit")
        save_depth(split_path, scene.scene_id, im_id, dep, unit)
    for kind, ms in (("mask", masks), ("mask_visib", masks_visib)):
        for im_id, per_gt in (ms or {}).items():
            for gt_idx, m in enumerate(per_gt):
                save_mask(split_path, scene.scene_id, im_id, gt_idx, m, visib=(kind == "mask_visib"))
    if scene.gts is not None:
        save_scene_gt(d / SCENE_GT, scene.gts)
    if scene.gt_infos is not None:
        save_scene_gt_info(d / SCENE_GT_INFO, scene.gt_infos)
    # scene_camera.json last: list_scenes() only sees a scene once it is there.
    save_scene_camera(d / SCENE_CAMERA, scene.cameras)
    return d


def iter_scenes(split_path: PathLike) -> Iterator[SceneRecord]:
    """Yield every scene of a split, in scene-id order."""
    for sid in list_scenes(split_path):
        yield load_scene(split_path, sid)


# ---------------------------------------------------------------------------------------------
# Dataset-level files
# ---------------------------------------------------------------------------------------------


def load_models_info(path: PathLike) -> Dict[int, ModelInfo]:
    """Read ``models_info.json`` -> ``{obj_id: ModelInfo}`` (metres)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise BopFormatError(f"{path}: expected a JSON object keyed by object id")
    out: Dict[int, ModelInfo] = {}
    for k, e in data.items():
        obj_id = _id_key(k, path, "object id")
        where = f"object {k}"
        diameter = _scalar_mm(_get(e, "diameter", path, where), path, f"{where}.diameter")
        mins = np.array([_scalar_mm(_get(e, f"min_{a}", path, where), path, f"{where}.min_{a}") for a in "xyz"])
        size = np.array([_scalar_mm(_get(e, f"size_{a}", path, where), path, f"{where}.size_{a}") for a in "xyz"])
        disc = []
        for i, s in enumerate(e.get("symmetries_discrete", [])):
            w = f"{where}.symmetries_discrete[{i}]"
            if not isinstance(s, list) or len(s) != 16:
                raise BopFormatError(f"{path}: {w}: expected 16 numbers (row-major 4x4)")
            disc.append(
                np.array(
                    [(_scalar_mm if j in (3, 7, 11) else _scalar)(x, path, f"{w}[{j}]") for j, x in enumerate(s)]
                ).reshape(4, 4)
            )
        cont = []
        for i, s in enumerate(e.get("symmetries_continuous", [])):
            w = f"{where}.symmetries_continuous[{i}]"
            axis = _vector(_get(s, "axis", path, w), 3, path, f"{w}.axis")
            offset = _vector(_get(s, "offset", path, w), 3, path, f"{w}.offset", mm=True)
            cont.append((axis, offset))
        out[obj_id] = ModelInfo(obj_id, diameter, mins, size, disc, cont)
    return out


def save_models_info(path: PathLike, infos: Mapping[int, ModelInfo]) -> None:
    """Write ``{obj_id: ModelInfo}`` as ``models_info.json`` (lengths in mm)."""
    data: Dict[str, Any] = {}
    for obj_id in sorted(infos):
        m = infos[obj_id]
        e: Dict[str, Any] = {"diameter": _m_to_mm(m.diameter)}
        for i, a in enumerate("xyz"):
            e[f"min_{a}"] = _m_to_mm(m.min[i])
        for i, a in enumerate("xyz"):
            e[f"size_{a}"] = _m_to_mm(m.size[i])
        if m.symmetries_discrete:
            e["symmetries_discrete"] = [
                [_m_to_mm(x) if j in (3, 7, 11) else x for j, x in enumerate(_flat(s))] for s in m.symmetries_discrete
            ]
        if m.symmetries_continuous:
            e["symmetries_continuous"] = [
                {"axis": _flat(a), "offset": [_m_to_mm(x) for x in _flat(o)]} for a, o in m.symmetries_continuous
            ]
        data[str(int(obj_id))] = e
    _write_json(Path(path), data)


def load_camera(path: PathLike) -> DatasetCamera:
    """Read the dataset-level ``camera.json``."""
    path = Path(path)
    e = _read_json(path)
    f = {k: _scalar(_get(e, k, path, "camera"), path, k) for k in ("fx", "fy", "cx", "cy")}
    K = np.array([[f["fx"], 0.0, f["cx"]], [0.0, f["fy"], f["cy"]], [0.0, 0.0, 1.0]])
    width = _int(_get(e, "width", path, "camera"), path, "width")
    height = _int(_get(e, "height", path, "camera"), path, "height")
    unit = None
    if "depth_scale" in e:
        _scalar(e["depth_scale"], path, "depth_scale")
        unit = float(_mm_to_m(e["depth_scale"]))
    return DatasetCamera(K=K, width=width, height=height, depth_unit=unit)


def save_camera(path: PathLike, cam: DatasetCamera) -> None:
    """Write the dataset-level ``camera.json``."""
    e: Dict[str, Any] = {
        "cx": float(cam.K[0, 2]),
        "cy": float(cam.K[1, 2]),
        "fx": float(cam.K[0, 0]),
        "fy": float(cam.K[1, 1]),
        "height": cam.height,
        "width": cam.width,
    }
    if cam.depth_unit is not None:
        e["depth_scale"] = _m_to_mm(cam.depth_unit)
    _atomic_write_bytes(Path(path), (_dump(e) + "\n").encode("utf-8"))


def load_targets(path: PathLike) -> List[TargetRecord]:
    """Read a target list such as ``test_targets_bop19.json``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise BopFormatError(f"{path}: expected a JSON list of targets")
    out = []
    for i, e in enumerate(data):
        w = f"target {i}"
        out.append(
            TargetRecord(
                scene_id=_int(_get(e, "scene_id", path, w), path, f"{w}.scene_id"),
                im_id=_int(_get(e, "im_id", path, w), path, f"{w}.im_id"),
                obj_id=_int(_get(e, "obj_id", path, w), path, f"{w}.obj_id"),
                inst_count=_int(_get(e, "inst_count", path, w), path, f"{w}.inst_count"),
            )
        )
    return out


def save_targets(path: PathLike, targets: Sequence[TargetRecord]) -> None:
    """Write a target list (``test_targets_bop19.json`` format)."""
    _write_json(
        Path(path),
        [{"im_id": t.im_id, "inst_count": t.inst_count, "obj_id": t.obj_id, "scene_id": t.scene_id} for t in targets],
    )


def load_detections(path: PathLike) -> List[DetectionRecord]:
    """Read 2D detections in BOP's default-detections JSON format.

    Each entry has ``scene_id``, ``image_id``, ``category_id`` (object id), ``score``,
    ``bbox`` ``[x, y, w, h]`` and optionally ``time``.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise BopFormatError(f"{path}: expected a JSON list of detections")
    out = []
    for i, e in enumerate(data):
        w = f"detection {i}"
        bbox = _vector(_get(e, "bbox", path, w), 4, path, f"{w}.bbox")
        out.append(
            DetectionRecord(
                scene_id=_int(_get(e, "scene_id", path, w), path, f"{w}.scene_id"),
                im_id=_int(_get(e, "image_id", path, w), path, f"{w}.image_id"),
                obj_id=_int(_get(e, "category_id", path, w), path, f"{w}.category_id"),
                score=_scalar(_get(e, "score", path, w), path, f"{w}.score"),
                bbox=tuple(float(x) for x in bbox),  # type: ignore[arg-type]
                time=_scalar(e.get("time", -1), path, f"{w}.time"),
            )
        )
    return out


def save_detections(path: PathLike, dets: Sequence[DetectionRecord]) -> None:
    """Write detections in BOP's default-detections JSON format."""
    _write_json(
        Path(path),
        [
            {
                "scene_id": d.scene_id,
                "image_id": d.im_id,
                "category_id": d.obj_id,
                "score": float(d.score),
                "bbox": [float(x) for x in d.bbox],
                "time": float(d.time),
            }
            for d in dets
        ],
    )


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _cv2():
    import cv2  # local: keeps `import pose6d_ros.data.bop` light for JSON-only users

    return cv2


def rgb_path(split_path: PathLike, scene_id: int, im_id: int) -> Path:
    """The existing colour (or ``gray/``) image file of an image; ``FileNotFoundError`` if none."""
    d = scene_dir(split_path, scene_id)
    tried = []
    for sub in ("rgb", "gray"):
        for ext in _IMAGE_EXTS:
            p = d / sub / f"{int(im_id):06d}{ext}"
            if p.is_file():
                return p
            tried.append(p.name)
    raise FileNotFoundError(f"{d}: no image {int(im_id):06d} in rgb/ or gray/ (tried {', '.join(sorted(set(tried)))})")


def _imread(path: Path) -> np.ndarray:
    cv2 = _cv2()
    buf = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BopFormatError(f"{path}: not a readable image")
    return img


def _imwrite(path: Path, img: np.ndarray) -> None:
    cv2 = _cv2()
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:  # pragma: no cover - cv2 failure
        raise OSError(f"{path}: cv2.imencode failed")
    _atomic_write_bytes(path, buf.tobytes())


def load_rgb(split_path: PathLike, scene_id: int, im_id: int) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB (grey images are replicated, alpha dropped)."""
    cv2 = _cv2()
    path = rgb_path(split_path, scene_id, im_id)
    img = _imread(path)
    if img.dtype != np.uint8:
        raise BopFormatError(f"{path}: expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def save_rgb(split_path: PathLike, scene_id: int, im_id: int, image: np.ndarray, ext: str = ".png") -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB image to ``rgb/IM_ID.{png,jpg}``."""
    cv2 = _cv2()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"rgb: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in _IMAGE_EXTS:
        raise ValueError(f"rgb: extension must be one of {_IMAGE_EXTS}, got {ext}")
    path = scene_dir(split_path, scene_id) / "rgb" / f"{int(im_id):06d}{ext}"
    _imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def load_depth(split_path: PathLike, scene_id: int, im_id: int, depth_unit: float) -> np.ndarray:
    """Read ``depth/IM_ID.png`` as ``(H, W)`` float32 metres (0 where empty)."""
    path = scene_dir(split_path, scene_id) / "depth" / f"{int(im_id):06d}.png"
    raw = _imread(path)
    if raw.ndim != 2:
        raise BopFormatError(f"{path}: expected a single-channel depth PNG, got shape {raw.shape}")
    return (raw.astype(np.float64) * float(depth_unit)).astype(np.float32)


def save_depth(split_path: PathLike, scene_id: int, im_id: int, depth: np.ndarray, depth_unit: float) -> Path:
    """Write ``(H, W)`` metres as a uint16 PNG with ``value = round(depth / depth_unit)``.

    Quantises to ``depth_unit``; raises if a depth does not fit in 16 bits.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected (H, W), got {depth.shape}")
    if not np.all(np.isfinite(depth)) or np.any(depth < 0):
        raise ValueError("depth: values must be finite and >= 0")
    q = np.rint(depth / float(depth_unit))
    if q.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(
            f"depth: max {depth.max():.3f} m does not fit in uint16 with depth_unit {depth_unit} m; use a larger unit"
        )
    path = scene_dir(split_path, scene_id) / "depth" / f"{int(im_id):06d}.png"
    _imwrite(path, q.astype(np.uint16))
    return path


def _mask_path(split_path: PathLike, scene_id: int, im_id: int, gt_idx: int, visib: bool) -> Path:
    sub = "mask_visib" if visib else "mask"
    return scene_dir(split_path, scene_id) / sub / f"{int(im_id):06d}_{int(gt_idx):06d}.png"


def load_mask(split_path: PathLike, scene_id: int, im_id: int, gt_idx: int, visib: bool = True) -> np.ndarray:
    """Read ``mask[_visib]/IM_ID_GT_ID.png`` as ``(H, W)`` bool."""
    path = _mask_path(split_path, scene_id, im_id, gt_idx, visib)
    m = _imread(path)
    if m.ndim == 3:
        m = m[:, :, 0]
    return m > 0


def save_mask(
    split_path: PathLike, scene_id: int, im_id: int, gt_idx: int, mask: np.ndarray, visib: bool = True
) -> Path:
    """Write an ``(H, W)`` mask (non-zero = object) as a 0/255 PNG."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got {mask.shape}")
    path = _mask_path(split_path, scene_id, im_id, gt_idx, visib)
    _imwrite(path, np.where(mask > 0, 255, 0).astype(np.uint8))
    return path


# ---------------------------------------------------------------------------------------------
# Index over a split
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BopInstance:
    """One GT instance of a split: ``(scene_id, im_id, gt_idx)`` plus its object id."""

    scene_id: int
    im_id: int
    gt_idx: int
    obj_id: int


class BopDataset:
    """An index over a BOP split: its scenes, images and GT instances.

    Args:
        split_path: the split folder (``DATASET/test``...).
        obj_ids: keep only instances of these objects (``None``: all).
        min_visib_fract: keep only instances at least this visible (needs ``scene_gt_info.json``
            when > 0).
        targets: keep only images (and objects) listed here, e.g. ``load_targets(...)``.

    Attributes:
        scenes: ``{scene_id: SceneRecord}``.
        images: ``[(scene_id, im_id), ...]`` sorted.
        instances: ``[BopInstance, ...]`` after filtering; empty for an unlabeled split.

    Example:
        >>> ds = BopDataset("lm/test", obj_ids=[1])  # doctest: +SKIP
        >>> inst = ds.instances[0]; gt = ds.gt(inst); K = ds.camera(inst.scene_id, inst.im_id).K
    """

    def __init__(
        self,
        split_path: PathLike,
        *,
        obj_ids: Optional[Sequence[int]] = None,
        min_visib_fract: float = 0.0,
        targets: Optional[Sequence[TargetRecord]] = None,
    ) -> None:
        self.split_path = Path(split_path)
        scene_ids = list_scenes(self.split_path)
        if not scene_ids:
            raise FileNotFoundError(f"{self.split_path}: no BOP scenes (folders with {SCENE_CAMERA})")
        self.scenes: Dict[int, SceneRecord] = {sid: load_scene(self.split_path, sid) for sid in scene_ids}
        wanted_objs = None if obj_ids is None else {int(o) for o in obj_ids}
        target_keys = None
        if targets is not None:
            target_keys = {(t.scene_id, t.im_id, t.obj_id) for t in targets}
            target_images = {(t.scene_id, t.im_id) for t in targets}
        self.images: List[Tuple[int, int]] = []
        self.instances: List[BopInstance] = []
        for sid, scene in self.scenes.items():
            for im_id in scene.image_ids:
                if target_keys is not None and (sid, im_id) not in target_images:
                    continue
                self.images.append((sid, im_id))
                for gi, gt in enumerate((scene.gts or {}).get(im_id, [])):
                    if wanted_objs is not None and gt.obj_id not in wanted_objs:
                        continue
                    if target_keys is not None and (sid, im_id, gt.obj_id) not in target_keys:
                        continue
                    if min_visib_fract > 0:
                        info = self.gt_info_of(sid, im_id, gi)
                        if info is None:
                            raise BopFormatError(
                                f"{scene_dir(self.split_path, sid) / SCENE_GT_INFO}: needed for min_visib_fract"
                            )
                        if info.visib_fract < min_visib_fract:
                            continue
                    self.instances.append(BopInstance(sid, im_id, gi, gt.obj_id))

    @property
    def labelled(self) -> bool:
        return any(s.gts is not None for s in self.scenes.values())

    def require_labels(self, scene_ids: Optional[Sequence[int]] = None, info: bool = False) -> None:
        """Raise ``FileNotFoundError`` naming the first ``scene_gt.json`` (and, with ``info``,
        ``scene_gt_info.json``) missing from ``scene_ids`` (default: every scene): a split without
        labels must say so, not look like a split without the wanted objects."""
        for sid in self.scenes if scene_ids is None else scene_ids:
            scene = self.scenes.get(int(sid))
            if scene is None:
                continue
            for name, have in ((SCENE_GT, scene.gts), (SCENE_GT_INFO, scene.gt_infos if info else True)):
                if have is None:
                    raise FileNotFoundError(f"{scene_dir(self.split_path, sid) / name}: no such file "
                                            "(pose labels are needed; is this an unlabeled split?)")

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> BopInstance:
        return self.instances[i]

    def camera(self, scene_id: int, im_id: int) -> CameraRecord:
        return self.scenes[scene_id].cameras[im_id]

    def gt(self, inst: BopInstance) -> GtRecord:
        gts = self.scenes[inst.scene_id].gts
        assert gts is not None
        return gts[inst.im_id][inst.gt_idx]

    def gt_info_of(self, scene_id: int, im_id: int, gt_idx: int) -> Optional[GtInfoRecord]:
        infos = self.scenes[scene_id].gt_infos
        if infos is None or im_id not in infos:
            return None
        return infos[im_id][gt_idx]

    def gt_info(self, inst: BopInstance) -> Optional[GtInfoRecord]:
        return self.gt_info_of(inst.scene_id, inst.im_id, inst.gt_idx)

    def rgb_path(self, scene_id: int, im_id: int) -> Path:
        return rgb_path(self.split_path, scene_id, im_id)

    def load_rgb(self, scene_id: int, im_id: int) -> np.ndarray:
        return load_rgb(self.split_path, scene_id, im_id)

    def load_depth(self, scene_id: int, im_id: int) -> np.ndarray:
        unit = self.camera(scene_id, im_id).depth_unit
        if unit is None:
            raise BopFormatError(
                f"{scene_dir(self.split_path, scene_id) / SCENE_CAMERA}: image {im_id}: no depth_scale"
            )
        return load_depth(self.split_path, scene_id, im_id, unit)
