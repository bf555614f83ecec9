"""Object suites built from pybullet_data meshes: ``lm-lite`` (13 objects) and ``tless-lite`` (30).

Each object is re-centred on its tight box (the model origin is the box centre), scaled to a fixed
diameter between 5 and 25 cm, and coloured so that its pose is observable from its own appearance:
the duck keeps its texture; untextured asymmetric meshes get per-region colours; symmetric meshes
(torus, traffic cone, tray) get colour bands that respect their declared symmetry, so the registry's
symmetries stay true of the rendered object. The registries are written to
``config/objects_lm_lite.yaml`` and ``config/objects_tless_lite.yaml`` by
``python -m pose6d_ros.data.suites`` (deterministic; no absolute paths).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pose6d_ros.registry import (PYBULLET_SCHEME, ObjectRegistry, RegistryError, _parse_entry,
                                 _load_raw_vertices, mesh_diameter, resolve_mesh_uri)

SUITE_NAMES = ("lm-lite", "tless-lite")
_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@dataclass(frozen=True)
class SuiteObject:
    """How one suite object is made from a pybullet_data mesh.

    Attributes:
        name: registry name.
        mesh: ``pybullet_data://`` reference.
        diameter: target diameter in metres (5-25 cm).
        appearance: appearance spec (see ``registry.apply_appearance``); ``axis`` of bands is
            filled from ``symmetry`` when absent.
        symmetry: ``None``, ``"continuous:<axis>"`` or ``"discrete<n>:<axis>"`` (``n``-fold
            rotation about the axis through the model origin), axis one of ``x``, ``y``, ``z``.
    """

    name: str
    mesh: str
    diameter: float
    appearance: dict = field(default_factory=lambda: {"kind": "file"})
    symmetry: str | None = None


def _rand_urdf(idx: int, n_regions: int, suite_seed: int) -> SuiteObject:
    rng = np.random.default_rng([suite_seed, idx])
    return SuiteObject(name=f"blob{idx:03d}", mesh=f"{PYBULLET_SCHEME}random_urdfs/{idx:03d}/{idx:03d}.obj",
                       diameter=float(np.round(rng.uniform(0.06, 0.22), 3)),
                       appearance={"kind": "regions", "seed": 1000 + idx, "n": n_regions})


def _regions(seed: int, n: int = 6) -> dict:
    return {"kind": "regions", "seed": seed, "n": n}


def _bands(seed: int, n: int = 4) -> dict:
    return {"kind": "bands", "seed": seed, "n": n}


_TORUS = SuiteObject("torus", PYBULLET_SCHEME + "torus/torus_textured.obj", 0.14, _bands(4), "continuous:y")
# A 12-sided pyramid on a square plate: only the square's 4-fold symmetry is exact.
_CONE = SuiteObject("cone", PYBULLET_SCHEME + "racecar/meshes/cone.obj", 0.15, _bands(8), "discrete4:z")
_TRAY = SuiteObject("tray", PYBULLET_SCHEME + "tray/tray_textured.obj", 0.22, _bands(9, 3), "discrete4:z")

SUITES: dict[str, list[SuiteObject]] = {
    "lm-lite": [
        SuiteObject("duck", PYBULLET_SCHEME + "duck.obj", 0.12, {"kind": "file"}),
        SuiteObject("teddy", PYBULLET_SCHEME + "teddy2_VHACD_CHs.obj", 0.18, _regions(2)),
        SuiteObject("lego", PYBULLET_SCHEME + "lego/lego.obj", 0.08, _regions(3)),
        _TORUS,
        SuiteObject("bunny", PYBULLET_SCHEME + "bunny.obj", 0.16, _regions(5)),
        SuiteObject("mug", PYBULLET_SCHEME + "objects/mug.obj", 0.12, _regions(6)),
        SuiteObject("domino", PYBULLET_SCHEME + "domino/domino.obj", 0.07, _regions(7, 4)),
        _CONE,
        _TRAY,
    ] + [_rand_urdf(i, 6, 1) for i in range(4)],
    # T-LESS-like: mostly plain parts with few colour regions, a few symmetric ones.
    "tless-lite": [_rand_urdf(i, 4, 2) for i in range(100, 127)] + [_TORUS, _CONE, _TRAY],
}


def suite_objects(suite: str) -> list[SuiteObject]:
    """The object specs of ``suite`` (one of :data:`SUITE_NAMES`)."""
    if suite not in SUITES:
        raise ValueError(f"suite: unknown {suite!r}; expected one of {SUITE_NAMES}")
    return list(SUITES[suite])


def config_path(suite: str) -> Path:
    """``config/objects_<suite>.yaml`` in the source tree (``-`` becomes ``_``)."""
    return _CONFIG_DIR / f"objects_{suite.replace('-', '_')}.yaml"


def suite_entries(suite: str) -> list[dict[str, Any]]:
    """Registry entries (YAML-ready dicts) for ``suite``: origin at the box centre, scale to the
    target diameter, symmetries in the model frame. Deterministic."""
    entries = []
    for i, spec in enumerate(suite_objects(suite), start=1):
        raw = _load_raw_vertices(str(resolve_mesh_uri(spec.mesh, Path("."))))
        origin = (raw.min(axis=0) + raw.max(axis=0)) / 2
        scale = spec.diameter / mesh_diameter(raw - origin)
        e: dict[str, Any] = {"id": i, "name": spec.name, "mesh": spec.mesh, "units": "m",
                             "scale": float(scale), "origin": origin.tolist()}
        app = dict(spec.appearance)
        if spec.symmetry is not None:
            kind, axis_name = spec.symmetry.split(":")
            axis = np.eye(3)[" xyz".index(axis_name) - 1]
            if kind == "continuous":
                e["symmetries_continuous"] = [{"axis": axis.tolist(), "offset": [0.0, 0.0, 0.0]}]
            elif kind.startswith("discrete"):
                n = int(kind[len("discrete"):])
                e["symmetries_discrete"] = [_rotation_about(axis, 2 * np.pi * k / n).reshape(-1).tolist()
                                            for k in range(1, n)]
            else:
                raise ValueError(f"{spec.name}.symmetry: unknown kind {kind!r}")
            if app.get("kind") == "bands":
                app.setdefault("axis", axis.tolist())
                app.setdefault("center", [0.0, 0.0, 0.0])
        e["appearance"] = app
        entries.append(e)
    return entries


def suite_registry(suite: str) -> ObjectRegistry:
    """Build ``suite``'s registry in memory from pybullet_data (no file needed)."""
    here = Path(".")
    return ObjectRegistry([_parse_entry(e, here, i, label=f"<suite {suite}>: objects[{i}]")
                           for i, e in enumerate(suite_entries(suite))], source=f"<suite {suite}>")


def load_suite_registry(suite: str) -> ObjectRegistry:
    """The committed ``config/objects_<suite>.yaml`` if present, else built from pybullet_data."""
    path = config_path(suite)
    try:
        return ObjectRegistry.from_yaml(path)
    except RegistryError:
        if path.exists():
            raise
        return suite_registry(suite)


def _rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """4x4 rotation by ``angle`` about ``axis`` through the origin (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    T = np.eye(4)
    T[:3, :3] = np.round(R, 12)
    return T


def main(argv: Sequence[str] | None = None) -> None:
    """Write ``config/objects_<suite>.yaml`` for the given suites (default: all)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="append", choices=SUITE_NAMES)
    p.add_argument("--out-dir", type=Path, default=_CONFIG_DIR)
    args = p.parse_args(argv)
    for suite in args.suite or SUITE_NAMES:
        path = args.out_dir / f"objects_{suite.replace('-', '_')}.yaml"
        suite_registry(suite).to_yaml(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
