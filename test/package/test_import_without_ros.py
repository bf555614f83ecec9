"""The core library imports in an interpreter where rclpy (and every ROS message package) cannot."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

BLOCKER = r"""
import sys, importlib.abc
BLOCKED = {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "tf2_msgs",
           "visualization_msgs", "builtin_interfaces", "cv_bridge", "launch", "launch_ros"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")
        return None
sys.meta_path.insert(0, Block())
try:
    import rclpy
except ImportError:
    pass
else:
    raise SystemExit("the blocker failed: rclpy imported")
import pkgutil, importlib, pose6d_ros
failed = []
for m in pkgutil.walk_packages(pose6d_ros.__path__, "pose6d_ros."):
    if m.name.startswith("pose6d_ros.ros"):
        continue
    try:
        importlib.import_module(m.name)
    except ImportError as e:
        failed.append(f"{m.name}: {e}")
print("IMPORTED", len(list(pkgutil.walk_packages(pose6d_ros.__path__, "pose6d_ros."))))
if failed:
    raise SystemExit("\n".join(failed))
"""


def test_core_imports_without_rclpy():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "IMPORTED" in out.stdout

