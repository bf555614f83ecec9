"""Object registry: lookups, YAML/BOP round trips, validation messages, geometry vs brute force."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from pose6d_ros.registry import ObjectRegistry, RegistryError, mesh_diameter

REPO = Path(__file__).resolve().parents[2]


def _write_mesh(path: Path, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = trimesh.creation.icosphere(subdivisions=2)
    m.vertices = m.vertices * np.array([1.0, 0.6, 0.3]) * 50.0 + rng.normal(size=3)  # an ellipsoid, in cm
    m.export(path)
    return np.asarray(trimesh.load(path, force="mesh", process=False).vertices)


def _write_yaml(path: Path, objects: list) -> Path:
    path.write_text(yaml.safe_dump({"objects": objects}))
    return path


@pytest.fixture
def two_objects(tmp_path: Path):
    v1 = _write_mesh(tmp_path / "a.ply", 0)
    (tmp_path / "sub").mkdir()
    v2 = _write_mesh(tmp_path / "sub" / "b.obj", 1)
    objs = [{"id": 7, "name": "alpha", "mesh": "a.ply", "units": "cm", "scale": 2.0},
            {"id": 3, "name": "beta", "mesh": "sub/b.obj", "units": "mm",
             "symmetries_continuous": [{"axis": [0, 0, 2], "offset": [0, 0, 0]}]}]
    return _write_yaml(tmp_path / "reg.yaml", objs), {7: v1 * 0.02, 3: v2 * 0.001}


class TestLookup:
    def test_ids_names_index(self, two_objects):
        reg = ObjectRegistry.from_yaml(two_objects[0])
        assert reg.ids == [3, 7] and reg.names == ["beta", "alpha"]
        assert reg.index_of(3) == 0 and reg.index_of(7) == 1
        assert reg.get("alpha").id == 7 and reg.get(3).name == "beta"
        assert reg.resolve("7").name == "alpha" and reg.resolve("beta").id == 3
        with pytest.raises(KeyError):
            reg.get(5)
        with pytest.raises(KeyError):
            reg.resolve("gamma")
        with pytest.raises(KeyError):
            reg.index_of(99)

    def test_geometry_vs_brute_force(self, two_objects):
        path, verts = two_objects
        reg = ObjectRegistry.from_yaml(path)
        for oid, v in verts.items():
            o = reg.get(oid)
            assert o.diameter == pytest.approx(pdist(v).max(), rel=1e-9)
            lo, hi = v.min(0), v.max(0)
            corners = np.array(list(itertools.product(*zip(lo, hi))))
            np.testing.assert_allclose(o.keypoints[:8], corners, atol=1e-12)
            np.testing.assert_allclose(o.keypoints[8], (lo + hi) / 2, atol=1e-12)
        axis = reg.get(3).symmetries_continuous[0].axis
        np.testing.assert_allclose(axis, [0, 0, 1])
        assert reg.get(3).is_symmetric and not reg.get(7).is_symmetric

    def test_yaml_round_trip_has_no_absolute_paths(self, two_objects, tmp_path):
        reg = ObjectRegistry.from_yaml(two_objects[0])
        out = tmp_path / "elsewhere" / "copy.yaml"
        reg.to_yaml(out)
        doc = yaml.safe_load(out.read_text())
        assert all(not Path(e["mesh"]).is_absolute() for e in doc["objects"])
        back = ObjectRegistry.from_yaml(out)
        for a, b in zip(reg, back):
            assert (a.id, a.name, a.units, a.scale) == (b.id, b.name, b.units, b.scale)
            assert Path(a.mesh_path).resolve() == Path(b.mesh_path).resolve()
            assert a.diameter == pytest.approx(b.diameter, rel=1e-8)
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-8)

    def test_pybullet_scheme(self, tmp_path):
        import pybullet_data

        path = _write_yaml(tmp_path / "r.yaml", [{"id": 1, "name": "duck", "mesh": "pybullet_data://duck.obj"}])
        o = ObjectRegistry.from_yaml(path).get("duck")
        assert Path(o.mesh_path) == Path(pybullet_data.getDataPath()) / "duck.obj"


class TestBopModelsInfo:
    def test_millimetres_to_metres(self, tmp_path):
        v = _write_mesh(tmp_path / "obj_000002.ply", 3)  # coordinates read as mm
        sym = np.eye(4)
        sym[:3, :3] = np.diag([-1.0, -1.0, 1.0])
        sym[:3, 3] = [10.0, 0.0, 0.0]  # mm
        info = {"2": {"diameter": 123.0, "symmetries_discrete": [sym.reshape(-1).tolist()],
                      "symmetries_continuous": [{"axis": [0, 1, 0], "offset": [0, 0, 20.0]}]}}
        (tmp_path / "models_info.json").write_text(json.dumps(info))
        reg = ObjectRegistry.from_bop_models_info(tmp_path / "models_info.json")
        o = reg.get(2)
        assert o.name == "obj_000002" and o.units == "mm"
        assert o.diameter == pytest.approx(0.123)
        np.testing.assert_allclose(o.symmetries_discrete[0][:3, 3], [0.01, 0, 0])
        np.testing.assert_allclose(o.symmetries_continuous[0].offset, [0, 0, 0.02])
        np.testing.assert_allclose(o.keypoints[7], v.max(0) * 1e-3)


class TestValidation:
    def _base(self, tmp_path):
        _write_mesh(tmp_path / "m.ply")
        return {"id": 1, "name": "a", "mesh": "m.ply"}

    @pytest.mark.parametrize("case, field", [
        ("dup_id", "duplicate id"), ("dup_name", "duplicate name"), ("missing_mesh", "objects[0].mesh"),
        ("bad_units", "objects[0].units"), ("bad_sym", "objects[0].symmetries_discrete[0]"),
        ("bad_axis", "objects[0].symmetries_continuous[0].axis"), ("bad_kp", "objects[0].keypoints"),
    ])
    def test_messages_name_file_and_field(self, tmp_path, case, field):
        e = self._base(tmp_path)
        objs = [e]
        if case == "dup_id":
            objs = [e, dict(e, name="b")]
        elif case == "dup_name":
            objs = [e, dict(e, id=2)]
        elif case == "missing_mesh":
            objs = [dict(e, mesh="nope.ply")]
        elif case == "bad_units":
            objs = [dict(e, units="inch")]
        elif case == "bad_sym":
            objs = [dict(e, symmetries_discrete=[[1, 0, 0, 0, 1, 0, 0, 0, 1]])]
        elif case == "bad_axis":
            objs = [dict(e, symmetries_continuous=[{"axis": [0, 1], "offset": [0, 0, 0]}])]
        elif case == "bad_kp":
            objs = [dict(e, keypoints=[[0, 0, 0]] * 8)]
        path = _write_yaml(tmp_path / "bad.yaml", objs)
        with pytest.raises(RegistryError) as exc:
            ObjectRegistry.from_yaml(path)
        assert str(path) in str(exc.value) and field in str(exc.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(RegistryError, match="not found"):
            ObjectRegistry.from_yaml(tmp_path / "none.yaml")


class TestSuiteConfigs:
    @pytest.mark.parametrize("name, n", [("lm_lite", 13), ("tless_lite", 30)])
    def test_config_loads_and_diameters_match_meshes(self, name, n):
        reg = ObjectRegistry.from_yaml(REPO / "config" / f"objects_{name}.yaml")
        assert len(reg) == n and reg.ids == list(range(1, n + 1))
        for o in reg:
            v = o.model_vertices()
            assert 0.05 <= o.diameter <= 0.25
            assert o.diameter == pytest.approx(pdist(v).max(), rel=1e-6), o.name
            np.testing.assert_allclose(o.keypoints[8], (v.min(0) + v.max(0)) / 2, atol=1e-7)
            assert Path(o.mesh_path).is_file()

    def test_declared_symmetries_hold_for_the_coloured_mesh(self):
        """Each declared symmetry maps the surface (and its colours) onto itself."""
        reg = ObjectRegistry.from_yaml(REPO / "config" / "objects_lm_lite.yaml")
        sym = [o for o in reg if o.is_symmetric]
        assert {o.name for o in sym} == {"torus", "cone", "tray"}
        rng = np.random.default_rng(0)
        for o in sym:
            m = o.load_mesh()
            pts, fid = trimesh.sample.sample_surface(m, 1500, seed=1)
            col = np.asarray(m.visual.vertex_colors)[m.faces[fid, 0], :3].astype(float)
            transforms = list(o.symmetries_discrete)
            for s in o.symmetries_continuous:
                for ang in rng.uniform(0.3, 6.0, 3):
                    R = trimesh.transformations.rotation_matrix(ang, s.axis, s.offset)
                    transforms.append(R)
            # A dense sampling of the surface stands in for it (spacing well under 1% of the diameter).
            ref, ref_f = trimesh.sample.sample_surface(m, 60000, seed=2)
            ref_col = np.asarray(m.visual.vertex_colors)[m.faces[ref_f, 0], :3].astype(float)
            tree = cKDTree(ref)
            for T in transforms:
                q = pts @ T[:3, :3].T + T[:3, 3]
                d, j = tree.query(q)
                assert np.percentile(d, 95) < 0.015 * o.diameter, o.name
                same = np.all(np.abs(ref_col[j] - col) < 1, axis=1)
                assert same.mean() > 0.85, o.name

    def test_mesh_diameter_degenerate_points(self):
        flat = np.array([[0.0, 0, 0], [1, 0, 0], [0.5, 0, 0]])
        assert mesh_diameter(flat) == pytest.approx(1.0)


def test_fingerprint_follows_what_renders_the_objects(tmp_path):
    """Rendered-data caches key on the fingerprint: it must change with the mesh bytes, the scale or the
    appearance, and not with an unrelated object or a re-read of the same files."""
    _write_mesh(tmp_path / "a.ply", 0)
    _write_mesh(tmp_path / "b.ply", 1)
    objs = [{"id": 1, "name": "a", "mesh": "a.ply", "units": "mm"}, {"id": 2, "name": "b", "mesh": "b.ply", "units": "mm"}]
    reg = ObjectRegistry.from_yaml(_write_yaml(tmp_path / "o.yaml", objs))
    base = reg.fingerprint([1])
    assert base == ObjectRegistry.from_yaml(tmp_path / "o.yaml").fingerprint([1])
    assert reg.fingerprint([2]) != base
    objs[1]["scale"] = 2.0  # another object only
    assert ObjectRegistry.from_yaml(_write_yaml(tmp_path / "o2.yaml", objs)).fingerprint([1]) == base
    scaled = [dict(objs[0], scale=1.5)]
    assert ObjectRegistry.from_yaml(_write_yaml(tmp_path / "o3.yaml", scaled)).fingerprint([1]) != base
    painted = [dict(objs[0], appearance={"kind": "regions", "n": 4})]
    assert ObjectRegistry.from_yaml(_write_yaml(tmp_path / "o4.yaml", painted)).fingerprint([1]) != base
    _write_mesh(tmp_path / "c.ply", 5)  # same registry entry, other mesh bytes
    (tmp_path / "a.ply").write_bytes((tmp_path / "c.ply").read_bytes())
    from pose6d_ros import registry as registry_module
    registry_module._file_sha1_of_version.cache_clear()  # coarse file-system clocks
    assert ObjectRegistry.from_yaml(tmp_path / "o.yaml").fingerprint([1]) != base
