"""package.xml is valid and declares every ROS package the code imports."""

from __future__ import annotations

import ast
import configparser
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Python modules that are ROS packages (resolved through rosdep/ament on a robot).
ROS_PACKAGES = {
    "rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "tf2_msgs",
    "visualization_msgs", "builtin_interfaces", "rcl_interfaces", "launch", "launch_ros",
    "cv_bridge", "tf2_ros", "tf_transformations", "message_filters", "ament_index_python",
}


def _imported_top_level(paths):
    names = set()
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_parses_and_covers_imports():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.name == "pose6d_ros"
    assert pkg.package_format == 3
    declared = {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.test_depends}
    sources = list((ROOT / "pose6d_ros").rglob("*.py")) + list((ROOT / "launch").glob("*.py"))
    used = _imported_top_level(sources) & ROS_PACKAGES
    missing = sorted(used - declared)
    assert not missing, f"package.xml lacks depends for ROS packages imported by the code: {missing}"
    for required in ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "tf2_msgs",
                     "visualization_msgs"):
        assert required in declared, required


def test_only_ros_subpackage_imports_rclpy_or_messages():
    core = [p for p in (ROOT / "pose6d_ros").rglob("*.py") if "ros" not in p.relative_to(ROOT / "pose6d_ros").parts[:1]]
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_top_level([p]) & ROS_PACKAGES) for p in core}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core modules import ROS packages: {offenders}"


def test_console_scripts_install_under_lib_pose6d_ros():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/pose6d_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/pose6d_ros"


def test_entry_points_name_real_functions():
    """Every console script in setup.py points at a module with that callable (ros2 run would fail)."""
    import importlib.util

    tree = ast.parse((ROOT / "setup.py").read_text())
    specs = [
        n.value for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and " = pose6d_ros." in n.value
    ]
    assert specs
    missing = []
    for spec in specs:
        name, target = (s.strip() for s in spec.split("="))
        module, func = target.split(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            missing.append(f"{name}: {path.relative_to(ROOT)} missing")
            continue
        funcs = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        if func not in funcs:
            missing.append(f"{name}: {module} has no {func}()")
    assert not missing, missing
