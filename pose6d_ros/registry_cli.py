"""``make_registry``: an object registry YAML from your own meshes (PLY, OBJ, STL, ...) or URDF links.

    make_registry --mesh meshes/gear.ply --units mm \\
                  --urdf robot.urdf --link bracket \\
                  --out objects.yaml

Each ``--mesh`` or ``--urdf`` starts an object; the options after it (``--name``, ``--id``, ``--units``,
``--scale``, ``--origin``, ``--link``) belong to that object. The registry (format in
``pose6d_ros/registry.py``) gets each object's diameter and tight-box keypoints computed from the mesh
by :meth:`ObjectRegistry.from_yaml` (``mesh_diameter``, ``box_keypoints_np``), in metres, and mesh
paths relative to the output file.

A URDF object is the first ``<visual>`` with a ``<mesh filename=... scale=...>`` of ``--link`` (default:
the first link that has one). URDF lengths are metres, so the registry's ``units`` is ``m`` and its
``scale`` the mesh's (uniform) scale; the visual's ``<origin xyz>`` is kept, so that poses are those of
the link frame: ``x_link = scale * x_file + xyz`` (a rotated visual, ``rpy`` not zero, is refused).
``package://<pkg>/...`` resolves to a folder ``<pkg>`` above the URDF, else to the package's share
directory in the ament index.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pose6d_ros._checks import InputError, run_cli
from pose6d_ros.registry import UNIT_TO_M, ObjectRegistry

PROG = "make_registry"


class _NewObject(argparse.Action):
    """``--mesh PATH`` / ``--urdf PATH``: start a new object."""

    def __call__(self, parser, namespace, value, option_string=None):
        objs = getattr(namespace, "objects", None) or []
        objs.append({"kind": self.dest, "path": value})
        namespace.objects = objs


class _ObjectOption(argparse.Action):
    """An option of the object started last."""

    def __call__(self, parser, namespace, value, option_string=None):
        objs = getattr(namespace, "objects", None)
        if not objs:
            parser.error(f"{option_string} must follow a --mesh or --urdf")
        if self.dest in objs[-1]:
            parser.error(f"{option_string} given twice for {objs[-1]['path']}")
        objs[-1][self.dest] = value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Per-object options follow their --mesh/--urdf. Example:\n"
                                       "  make_registry --mesh gear.ply --units mm --mesh cap.obj --name cap "
                                       "--units m --out objects.yaml")
    p.add_argument("--mesh", dest="mesh", action=_NewObject, help="a mesh file (PLY, OBJ, STL, GLB...): a new object")
    p.add_argument("--urdf", dest="urdf", action=_NewObject, help="a URDF file: a new object from a link's visual mesh")
    p.add_argument("--name", action=_ObjectOption,
                   help="object name (the detector's class_id; default: the file stem, or the URDF link)")
    p.add_argument("--id", type=int, action=_ObjectOption, help="object id (default: its position, from 1)")
    p.add_argument("--units", choices=sorted(UNIT_TO_M), action=_ObjectOption,
                   help="unit of the mesh file's coordinates (default m; not for --urdf: URDF is in metres)")
    p.add_argument("--scale", type=float, action=_ObjectOption, help="extra factor after the unit (default 1)")
    p.add_argument("--origin", type=float, nargs=3, metavar=("X", "Y", "Z"), action=_ObjectOption,
                   help="point of the mesh file (file units) that becomes the object's origin (default 0 0 0)")
    p.add_argument("--link", action=_ObjectOption, help="URDF link to take (default: the first with a visual mesh)")
    p.add_argument("--out", required=True, help="registry YAML to write")
    return p


def _urdf_visual(urdf: Path, link: Optional[str]) -> Dict[str, Any]:
    """``{link, mesh (Path), scale, xyz}`` of the first visual mesh of ``link`` (or of the first link having one)."""
    try:
        root = ET.parse(urdf).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{urdf}: not a valid URDF (XML: {exc})") from None
    links = [el for el in root.iter("link") if link is None or el.get("name") == link]
    if link is not None and not links:
        raise InputError(f"{urdf}: --link {link}: no such link")
    for el in links:
        for visual in el.findall("visual"):
            mesh = visual.find("geometry/mesh")
            if mesh is None or not mesh.get("filename"):
                continue
            where = f"{urdf}: link {el.get('name')!r}"
            scale = _floats(mesh.get("scale") or "1 1 1", f"{where}: mesh scale")
            if max(scale) - min(scale) > 1e-9 * max(abs(s) for s in scale) or scale[0] <= 0:
                raise InputError(f"{where}: mesh scale {mesh.get('scale')!r}: only a uniform positive scale is "
                                 "supported")
            origin = visual.find("origin")
            xyz = _floats((origin.get("xyz") if origin is not None else None) or "0 0 0", f"{where}: visual origin xyz")
            rpy = _floats((origin.get("rpy") if origin is not None else None) or "0 0 0", f"{where}: visual origin rpy")
            if any(abs(a) > 1e-9 for a in rpy):
                raise InputError(f"{where}: visual origin rpy {rpy} is not zero: export the mesh in the link frame "
                                 "(or use --mesh with the mesh file)")
            return {"link": el.get("name"), "mesh": _resolve_urdf_uri(mesh.get("filename"), urdf, where),
                    "scale": scale[0], "xyz": xyz}
    raise InputError(f"{urdf}: " + (f"link {link!r} has" if link else "no link has") +
                     " a <visual><geometry><mesh filename=...>")


def _floats(text: str, where: str) -> List[float]:
    """Three numbers of a URDF attribute such as ``xyz="0 0 0.1"``."""
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        values = []
    if len(values) != 3:
        raise InputError(f"{where} {text!r}: expected three numbers")
    return values


def _resolve_urdf_uri(uri: str, urdf: Path, where: str) -> Path:
    """A URDF mesh filename as a path: ``file://``, ``package://<pkg>/...`` or relative to the URDF."""
    if uri.startswith("file://"):
        path = Path(uri[len("file://"):])
    elif uri.startswith("package://"):
        pkg, _, rest = uri[len("package://"):].partition("/")
        # a source checkout: the package folder is above the URDF (pkg/urdf/robot.urdf)
        above = [d for d in urdf.resolve().parents if d.name == pkg]
        # an installed package: its share directory in the ament index (what a sourced workspace puts on
        # AMENT_PREFIX_PATH; read directly: the core imports no ROS package)
        share = [Path(p) / "share" / pkg for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
                 if p and (Path(p) / "share" / "ament_index" / "resource_index" / "packages" / pkg).is_file()]
        if not above and not share:
            raise InputError(f"{where}: mesh {uri!r}: package {pkg!r} is neither a folder above the URDF nor in "
                             "the ament index (AMENT_PREFIX_PATH: source its workspace, or use --mesh)")
        path = (above or share)[0] / rest
    else:
        path = urdf.parent / uri
    if not path.is_file():
        raise InputError(f"{where}: mesh file not found: {uri!r} (resolved to {path})")
    return path


def _entry(obj: Dict[str, Any], position: int) -> Dict[str, Any]:
    """One registry YAML entry (without diameter and keypoints: the registry computes them)."""
    path = Path(obj["path"])
    if not path.is_file():
        raise InputError(f"--{obj['kind']} {path}: no such file")
    entry: Dict[str, Any] = {"id": obj.get("id", position), "name": obj.get("name")}
    if obj["kind"] == "urdf":
        if "units" in obj:
            raise InputError(f"--urdf {path}: --units does not apply (URDF is in metres; the mesh's scale= gives "
                             "the file's unit)")
        vis = _urdf_visual(path, obj.get("link"))
        scale = vis["scale"] * obj.get("scale", 1.0)
        # x_link = s * x_file + xyz = s * (x_file - origin) with origin = -xyz / s (file units)
        origin = [-v / vis["scale"] for v in vis["xyz"]]
        if "origin" in obj:
            origin = [a + b for a, b in zip(origin, obj["origin"])]
        entry.update(name=entry["name"] or vis["link"], mesh=str(vis["mesh"].resolve()), units="m", scale=scale,
                     origin=origin)
    else:
        if "link" in obj:
            raise InputError(f"--mesh {path}: --link is for --urdf")
        entry.update(name=entry["name"] or path.stem, mesh=str(path.resolve()), units=obj.get("units", "m"),
                     scale=obj.get("scale", 1.0), origin=list(obj.get("origin", (0.0, 0.0, 0.0))))
    entry["appearance"] = {"kind": "file"}
    return entry


def make_registry(objects: Sequence[Dict[str, Any]], out: str | os.PathLike) -> ObjectRegistry:
    """Write the registry of ``objects`` (the parsed ``--mesh``/``--urdf`` groups) to ``out``, atomically.

    The entries go through :meth:`ObjectRegistry.from_yaml` (validation, diameter and keypoints from the
    mesh) from a temporary file beside ``out``, and :meth:`ObjectRegistry.to_yaml` writes the result.
    """
    import yaml

    out = Path(out)
    entries = [_entry(o, i + 1) for i, o in enumerate(objects)]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".yaml")
    os.close(fd)
    try:
        Path(tmp).write_text(yaml.safe_dump({"objects": entries}, sort_keys=False), encoding="utf-8")
        registry = ObjectRegistry.from_yaml(tmp)
        registry.to_yaml(tmp)  # relative mesh paths from the same folder as out
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ObjectRegistry.from_yaml(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``make_registry`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    objects: List[Dict[str, Any]] = getattr(args, "objects", None) or []
    if not objects:
        parser.error("give at least one --mesh or --urdf")

    def body() -> None:
        registry = make_registry(objects, args.out)
        for o in registry:
            lo, hi = o.keypoints[:8].min(0), o.keypoints[:8].max(0)
            print(f"{o.id} {o.name}: diameter {o.diameter:.4f} m, box {' x '.join(f'{v:.4f}' for v in hi - lo)} m")
        print(f"wrote {len(registry)} objects to {args.out}")

    return run_cli(PROG, body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
