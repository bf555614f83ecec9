"""The launch file starts real executables with real config files.

No `ros2`/`launch` can be installed here, so the launch file is read as source: every `Node(...)`
action must name this package, an executable that setup.py installs, and config files that exist.
The executables themselves run in the ROS tests.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _console_scripts():
    text = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"(\w+) = pose6d_ros\.[\w.]+:\w+"', text))


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_launch_nodes_name_installed_executables_and_existing_configs():
    path = ROOT / "launch" / "estimator.launch.py"
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    nodes = _calls(tree, "Node")
    assert len(nodes) == 2
    scripts = _console_scripts()
    executables = set()
    for node in nodes:
        kw = {k.arg: k.value for k in node.keywords}
        assert ast.literal_eval(kw["package"]) == "pose6d_ros"
        exe = ast.literal_eval(kw["executable"])
        assert exe in scripts, f"launch starts '{exe}', which setup.py does not install"
        executables.add(exe)
    assert executables == {"estimator_node", "detector_node"}
    # Every default config path is share/pose6d_ros/config/<file>: the file must exist and be installed.
    args = {ast.literal_eval(c.args[0]): c for c in _calls(tree, "DeclareLaunchArgument")}
    for name in ("config", "detector_config", "objects"):
        default = {k.arg: k.value for k in args[name].keywords}["default_value"]
        parts = [ast.literal_eval(a) for a in default.args[1:]]
        assert parts[0] == "config"
        assert (ROOT / "config" / parts[1]).is_file(), f"launch argument '{name}' points at missing config/{parts[1]}"
    for arg in ("config", "device", "use_detector", "image_topic", "camera_info_topic"):
        assert arg in args
    setup_text = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in setup_text and 'glob("config/*.yaml")' in setup_text


def test_launch_file_resolves_to_node_command_lines_without_ros2_launch():
    """launch_graph runs the file against its minimal launch API: both nodes by default, the estimator
    alone with use_detector false; every params file it passes exists (the checkout's config/ when
    the package is not in an ament index)."""
    from pose6d_ros.ros.launch_graph import LaunchError, resolve

    launch = ROOT / "launch" / "estimator.launch.py"
    both = resolve(launch, {"model": "/m.onnx"})
    assert [c.name for c in both] == ["pose6d_detector", "pose6d_estimator"]
    for c in both:
        ros = c.argv[c.argv.index("--ros-args") + 1:]
        assert ros[:2] == ["-r", f"__node:={c.name}"]
        files = [ros[i + 1] for i, a in enumerate(ros) if a == "--params-file"]
        assert [pathlib.Path(f).name for f in files] == [c.name.replace("pose6d_", "") + ".yaml"]
        assert pathlib.Path(files[0]).is_file()
        objects = [a for a in ros if a.startswith("objects:=")]
        assert len(objects) == 1 and pathlib.Path(objects[0].split(":=", 1)[1]).is_file()
    assert "model:=/m.onnx" in both[1].argv and 'model:=""' in both[0].argv
    for off in ("false", "0", "False"):
        assert [c.name for c in resolve(launch, {"use_detector": off})] == ["pose6d_estimator"]
    assert [c.name for c in resolve(launch, {"use_detector": "TRUE"})] == ["pose6d_detector", "pose6d_estimator"]
    est = resolve(launch, {"detections_topic": "/ext/dets", "use_detector": "false"})[0].argv
    assert "detections_topic:=/ext/dets" in est
    for bad in ({"use_detector": "yes"}, {"detector": "true"}):
        try:
            resolve(launch, bad)
        except LaunchError as e:
            assert list(bad)[0] in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


def test_ros_interface_doc_lists_the_launch_arguments():
    """docs/ros-interface.md's launch-argument table: the file's declared arguments, in order, with
    their defaults (share directory written ``<share>``) and descriptions."""
    import re

    from pose6d_ros.ros.launch_graph import _Context, _modules, _perform, load_launch_file, minimal_launch_api, \
        share_directory

    text = (ROOT / "docs" / "ros-interface.md").read_text()
    section = text[text.index("## Launch"):]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", section, re.M)
    with _modules(minimal_launch_api()):
        description = load_launch_file(ROOT / "launch" / "estimator.launch.py")
    share = share_directory("pose6d_ros")
    declared = [(d.name, _perform(d.default_value, _Context({})).replace(share, "<share>") or '""', d.description)
                for d in description.get_launch_arguments()]
    assert rows == declared
