"""``make_registry``: registries from meshes and URDF links, against hand-computed diameters and box corners."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.registry_cli import main

CUBE_DIAMETER = math.sqrt(3) * 0.1  # a cube of side 0.1 m (the registry file keeps 9 decimals of a metre)
CUBE_CORNERS = np.array([[x, y, z] for x in (-0.05, 0.05) for y in (-0.05, 0.05) for z in (-0.05, 0.05)])


def _cube(path: Path, side: float, shift=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = trimesh.creation.box(extents=(side, side, side))
    m.apply_translation(shift)
    m.export(path)
    return path


def _urdf(path: Path, mesh_uri: str, scale: str = "0.001 0.001 0.001", xyz: str = "0 0 0", rpy: str = "0 0 0",
          link: str = "part") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<robot name="r"><link name="world"/><link name="{link}"><visual><origin xyz="{xyz}" rpy="{rpy}"/>'
                    f'<geometry><mesh filename="{mesh_uri}" scale="{scale}"/></geometry></visual></link></robot>')
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cube_in_metres_and_in_millimetres_give_the_hand_values(tmp_path, capsys):
    m = _cube(tmp_path / "m" / "cube.obj", 0.1)
    mm = _cube(tmp_path / "mm" / "cube.ply", 100.0)
    out = tmp_path / "reg" / "objects.yaml"
    code, stdout, _ = _run(["--mesh", m, "--mesh", mm, "--units", "mm", "--name", "cube_mm", "--out", out], capsys)
    assert code == 0
    assert "1 cube: diameter 0.1732 m, box 0.1000 x 0.1000 x 0.1000 m" in stdout
    reg = ObjectRegistry.from_yaml(out)
    assert reg.names == ["cube", "cube_mm"] and reg.ids == [1, 2]
    for o in reg:
        assert o.diameter == pytest.approx(CUBE_DIAMETER, abs=1e-9)
        np.testing.assert_allclose(o.keypoints[:8], CUBE_CORNERS, atol=1e-9)  # docs/conventions.md order
        np.testing.assert_allclose(o.keypoints[8], 0.0, atol=1e-9)
    assert reg.get("cube_mm").units == "mm"
    text = out.read_text()
    assert str(tmp_path) not in text and "mesh: ../mm/cube.ply" in text  # relative to the registry file


def test_origin_scale_and_id_belong_to_the_mesh_before_them(tmp_path, capsys):
    a = _cube(tmp_path / "a.stl", 100.0, shift=(50.0, 50.0, 50.0))  # corners 0..100 mm
    b = _cube(tmp_path / "b.stl", 1.0)
    out = tmp_path / "objects.yaml"
    assert _run(["--mesh", a, "--units", "mm", "--origin", 50, 50, 50, "--id", 7,
                 "--mesh", b, "--scale", 0.2, "--out", out], capsys)[0] == 0
    reg = ObjectRegistry.from_yaml(out)
    np.testing.assert_allclose(reg.get(7).keypoints[:8], CUBE_CORNERS, atol=1e-9)  # centred by the origin
    assert reg.get("b").id == 2 and reg.get("b").units == "m"
    assert reg.get("b").diameter == pytest.approx(math.sqrt(3) * 0.2, abs=1e-9)


def test_urdf_link_mesh_in_mm_with_visual_offset_is_in_the_link_frame(tmp_path, capsys):
    # package://cell/... resolves to the folder 'cell' above the URDF (a source checkout)
    _cube(tmp_path / "cell" / "meshes" / "cube.stl", 100.0)
    urdf = _urdf(tmp_path / "cell" / "urdf" / "cell.urdf", "package://cell/meshes/cube.stl", xyz="0.01 0 -0.02")
    out = tmp_path / "objects.yaml"
    assert _run(["--urdf", urdf, "--out", out], capsys)[0] == 0
    o = ObjectRegistry.from_yaml(out).get("part")  # named after its link
    assert (o.units, o.scale) == ("m", pytest.approx(0.001))
    # x_link = 0.001 * x_file + (0.01, 0, -0.02)
    np.testing.assert_allclose(o.keypoints[:8], CUBE_CORNERS + [0.01, 0.0, -0.02], atol=1e-9)
    assert o.diameter == pytest.approx(CUBE_DIAMETER, abs=1e-9)


def test_urdf_mesh_uris_relative_file_and_ament_index(tmp_path, capsys, monkeypatch):
    mesh = _cube(tmp_path / "m" / "cube.obj", 0.1)
    rel = _urdf(tmp_path / "r" / "rel.urdf", "../m/cube.obj", scale="1 1 1")
    fil = _urdf(tmp_path / "r" / "file.urdf", f"file://{mesh}", scale="2 2 2", link="big")
    # an installed package: <prefix>/share/<pkg>/..., registered in the ament index on AMENT_PREFIX_PATH
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "parts").write_text("")
    _cube(prefix / "share" / "parts" / "meshes" / "cube.stl", 100.0)
    pkg = _urdf(tmp_path / "elsewhere" / "p.urdf", "package://parts/meshes/cube.stl", link="installed")
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(["/nonexistent", str(prefix)]))
    out = tmp_path / "objects.yaml"
    assert _run(["--urdf", rel, "--name", "rel", "--urdf", fil, "--urdf", pkg, "--out", out], capsys)[0] == 0
    reg = ObjectRegistry.from_yaml(out)
    assert reg.names == ["rel", "big", "installed"]
    assert reg.get("rel").diameter == pytest.approx(CUBE_DIAMETER)
    assert reg.get("big").diameter == pytest.approx(2 * CUBE_DIAMETER)
    np.testing.assert_allclose(reg.get("installed").keypoints[:8], CUBE_CORNERS, atol=1e-9)


def test_urdf_picks_the_named_link(tmp_path, capsys):
    _cube(tmp_path / "a.stl", 100.0)
    _cube(tmp_path / "b.stl", 200.0)
    urdf = tmp_path / "two.urdf"
    urdf.write_text('<robot name="r">' + "".join(
        f'<link name="{n}"><visual><geometry><mesh filename="{f}" scale="0.001 0.001 0.001"/></geometry>'
        '</visual></link>'
        for n, f in (("first", "a.stl"), ("second", "b.stl"))) + "</robot>")
    out = tmp_path / "objects.yaml"
    assert _run(["--urdf", urdf, "--urdf", urdf, "--link", "second", "--out", out], capsys)[0] == 0
    reg = ObjectRegistry.from_yaml(out)
    assert reg.names == ["first", "second"]
    assert reg.get("second").diameter == pytest.approx(2 * CUBE_DIAMETER)


@pytest.mark.parametrize("case, needle", [
    ("missing_mesh", "nothere.ply"),
    ("not_a_mesh", "junk.ply"),
    ("rotated_visual", "link 'part'"),
    ("non_uniform_scale", "uniform"),
    ("units_with_urdf", "--units"),
    ("no_such_link", "--link nope"),
    ("unresolved_package", "package 'nowhere'"),
    ("duplicate_name", "duplicate name"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    cube = _cube(tmp_path / "cube.stl", 100.0)
    args = {
        "missing_mesh": ["--mesh", tmp_path / "nothere.ply"],
        "not_a_mesh": ["--mesh", tmp_path / "junk.ply"],
        "rotated_visual": ["--urdf", _urdf(tmp_path / "r.urdf", "cube.stl", rpy="0 0 1.57")],
        "non_uniform_scale": ["--urdf", _urdf(tmp_path / "s.urdf", "cube.stl", scale="0.001 0.002 0.001")],
        "units_with_urdf": ["--urdf", _urdf(tmp_path / "u.urdf", "cube.stl"), "--units", "mm"],
        "no_such_link": ["--urdf", _urdf(tmp_path / "l.urdf", "cube.stl"), "--link", "nope"],
        "unresolved_package": ["--urdf", _urdf(tmp_path / "p.urdf", "package://nowhere/cube.stl")],
        "duplicate_name": ["--mesh", cube, "--name", "x", "--mesh", cube, "--name", "x"],
    }[case]
    (tmp_path / "junk.ply").write_text("not a mesh")
    out = tmp_path / "objects.yaml"
    code, _, err = _run(args + ["--out", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("make_registry: error: ") and needle in lines[0], err
    assert not out.exists() and not list(tmp_path.glob(".objects.yaml.*"))  # no half-written file left


def test_an_object_option_before_any_mesh_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--units", "mm", "--mesh", "a.ply", "--out", str(tmp_path / "o.yaml")])
    assert e.value.code == 2 and "--units must follow a --mesh or --urdf" in capsys.readouterr().err
