"""`colcon build` of the package, as on a robot: scripts under lib/pose6d_ros, launch/config under share."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLCON_VENV = ROOT / ".colcon-venv"


def _colcon() -> pathlib.Path:
    exe = COLCON_VENV / "bin" / "colcon"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(COLCON_VENV)], check=True)
        subprocess.run([str(COLCON_VENV / "bin" / "pip"), "install", "-q", "colcon-common-extensions==0.3.0"],
                       check=True, timeout=600)
    return exe


@pytest.mark.slow
def test_colcon_build_installs_ros2_run_layout(tmp_path):
    colcon = _colcon()
    src = tmp_path / "ws" / "src" / "pose6d_ros"
    ignore = shutil.ignore_patterns(".venv", ".overlay", ".colcon-venv", ".git", "build", "install", "log",
                                    "data", "runs", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, src, ignore=ignore)
    ws = tmp_path / "ws"
    out = subprocess.run([str(colcon), "build"], cwd=ws, capture_output=True, text=True, timeout=600,
                         env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The development copies of tf2_msgs/vision_msgs must never be built over a robot's (COLCON_IGNORE).
    assert sorted(p.name for p in (ws / "install").iterdir() if p.is_dir()) == ["pose6d_ros"]
    lib = ws / "install" / "pose6d_ros" / "lib" / "pose6d_ros"
    for script in ("estimator_node", "detector_node", "train_selfsup", "export_onnx", "import_bag"):
        assert (lib / script).is_file(), script
    share = ws / "install" / "pose6d_ros" / "share" / "pose6d_ros"
    assert (share / "launch" / "estimator.launch.py").is_file()
    assert (share / "config" / "estimator.yaml").is_file()
    assert (share / "package.xml").is_file()
