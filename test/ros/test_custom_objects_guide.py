"""docs/custom-objects.md, followed start to finish on a tiny case: two small meshes (a PLY in mm, a URDF link's
STL at scale 0.001), a 4-frame bag of 128x96 images, 2 training steps per trainer.

The guide's ```bash blocks run verbatim, in order, in one bash process (its loops, variables and arrays as
written), with ``WS`` set to a temporary folder and these mechanical substitutions, and nothing else:

- each console script of setup.py is a bash function that runs setup.py's entry point for that name
  (``python -c "from <module> import <func>; ..."``) with the guide's arguments followed by ``TINY[name]``
  below (later ``--set`` keys and flags win); the venv's ``bin/`` is off ``PATH``, so a command the guide
  names that setup.py does not declare fails as "command not found";
- ``ros2`` runs ``guide_ros2.py``: ``bag record`` writes the bag with the ``rosbags`` library,
  ``launch`` runs the same launch file and arguments through ``pose6d_ros.ros.launch_graph`` on this run's
  ROS_DOMAIN_ID until both nodes are ready, then Ctrl-C.

A renamed, removed or broken command, flag or recipe key in the guide fails the run (``set -e``; the failing
command is printed). The outputs each step promises are then checked, and the registry against hand values.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "custom-objects.md"
HELPER = Path(__file__).with_name("guide_ros2.py")

_TRAIN = ["--threads", "1", "--set", "optim.max_steps=2", "--set", "data.crop_size=32", "--set",
          "model.backbone=mobilenet_v3_small", "--set", "model.head_pool=2", "--set", "data.synthetic_per_object=8",
          "--set", "data.batch_size=2", "--set", "data.synthetic_batch_size=2", "--set", "data.synthetic_cache_dir=",
          "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "checkpoint.period=0"]
#: what the test appends to each call of a console script (the tiny case's sizes and step counts)
TINY = {
    "train_supervised": _TRAIN,
    "train_selfsup": _TRAIN + ["--set", "selfsup.render.max_faces=300", "--set", "init.freeze_early_steps=1",
                               "--set", "init.adapt_bn_batch=2"],
    "distill": _TRAIN,
    "train_detector": ["--steps", "2", "--warmup", "1", "--batch", "2", "--image-size", "96", "128", "--box-head-dim",
                       "64", "--render-per-step", "2", "--buffer", "4", "--ckpt-every", "1", "--threads", "1",
                       "--no-progress", "--no-tensorboard"],
    "detect": ["--min-score", "0", "--threads", "1", "--no-progress"],  # a 2-step detector's scores are ~1/3
    "import_bag": ["--every", "1"],
}
#: the chain of issue 18 (item 4): the guide must walk through all of these
CHAIN = ["make_registry", "train_supervised", "import_bag", "train_detector", "detect", "train_selfsup", "distill",
         "export_onnx"]
#: first words of a shell command that are the shell's, not a program
SHELL_WORDS = {"for", "do", "done", "export", "if", "then", "fi", "in"}


def _bash_blocks() -> list:
    return re.findall(r"^```bash\n(.*?)^```", GUIDE.read_text(), flags=re.M | re.S)


def _console_scripts() -> dict:
    """``{name: (module, function)}`` from setup.py's console_scripts."""
    text = (ROOT / "setup.py").read_text()
    return {name: (mod, fn) for name, mod, fn in re.findall(r'"(\w+) = (pose6d_ros[\w.]*):(\w+)"', text)}


def _programs(block: str) -> list:
    """The first word of each simple command in ``block`` (continuations joined, comments and assignments off)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r";|&&|\|\||\|", line):
            words = shlex.split(part.replace("(", " ( ").replace(")", " ) ")) if "=(" not in part else []
            while words and (words[0] in SHELL_WORDS or re.match(r"^\w+=", words[0])):
                if words[0] in ("for", "export"):
                    words = []  # 'for o in 1 2' / 'export X=...': no program
                else:
                    words = words[1:]
            if words:
                out.append(words[0])
    return out


def test_every_program_the_guide_runs_is_a_console_script_or_ros2():
    scripts = _console_scripts()
    programs = [p for b in _bash_blocks() for p in _programs(b)]
    assert programs, "no ```bash block found in the guide"
    unknown = sorted({p for p in programs if p not in scripts and p != "ros2"})
    assert not unknown, f"docs/custom-objects.md runs {unknown}, which setup.py's console_scripts do not install"
    order = [p for p in programs if p in CHAIN]
    assert [p for i, p in enumerate(order) if p not in order[:i]] == CHAIN, order
    assert "ros2" in programs


def _mesh_files(ws: Path) -> None:
    """The user's meshes: an L-shaped part in mm with vertex colours (PLY), and a URDF cell whose link
    'bracket' shows an STL in mm (scale 0.001) shifted by xyz = (0.01, 0, 0) m."""
    import trimesh

    a = trimesh.creation.box(extents=(60.0, 20.0, 20.0))
    b = trimesh.creation.box(extents=(20.0, 40.0, 20.0))
    b.apply_translation((-20.0, 30.0, 0.0))
    gear = trimesh.util.concatenate([a, b])  # x in [-30, 30], y in [-10, 50], z in [-10, 10] mm
    gear.visual.vertex_colors = np.clip(np.c_[gear.vertices[:, :3] * 3 + 128, np.full(len(gear.vertices), 255)],
                                        0, 255).astype(np.uint8)
    (ws / "meshes").mkdir(parents=True)
    gear.export(ws / "meshes" / "gear.ply")
    (ws / "cell" / "urdf").mkdir(parents=True)
    (ws / "cell" / "meshes").mkdir()
    trimesh.creation.box(extents=(50.0, 30.0, 10.0)).export(ws / "cell" / "meshes" / "bracket.stl")
    (ws / "cell" / "urdf" / "cell.urdf").write_text(
        '<robot name="cell"><link name="base"/>'
        '<joint name="j" type="fixed"><parent link="base"/><child link="bracket"/></joint>'
        '<link name="bracket"><visual><origin xyz="0.01 0 0" rpy="0 0 0"/><geometry>'
        '<mesh filename="package://cell/meshes/bracket.stl" scale="0.001 0.001 0.001"/></geometry></visual>'
        '<collision><geometry><box size="0.05 0.03 0.01"/></geometry></collision></link></robot>')


def _script(ws: Path, calls: Path) -> str:
    """The bash program: the stand-in functions, then the guide's blocks in order."""
    lines = ["set -euo pipefail", "trap 'echo \"guide command failed (exit $?): $BASH_COMMAND\" >&2' ERR"]
    py = shlex.quote(sys.executable)
    for name, (mod, fn) in sorted(_console_scripts().items()):
        code = shlex.quote(f"import sys; sys.argv[0] = {name!r}; from {mod} import {fn}; sys.exit({fn}())")
        tiny = " ".join(shlex.quote(a) for a in TINY.get(name, []))
        lines.append(f'{name}() {{ echo {name} >> {shlex.quote(str(calls))}; {py} -c {code} "$@" {tiny}; }}')
    lines.append(f'ros2() {{ echo "ros2 $1" >> {shlex.quote(str(calls))}; {py} {shlex.quote(str(HELPER))} "$@"; }}')
    for i, block in enumerate(_bash_blocks()):
        lines += [f"echo '=== guide block {i + 1}'", block]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_the_guide_start_to_finish_on_a_tiny_case(tmp_path):
    ws = tmp_path / "ws"
    _mesh_files(ws)
    calls = tmp_path / "calls.txt"
    script = tmp_path / "guide.sh"
    script.write_text(_script(ws, calls))
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {**os.environ, "WS": str(ws), "PATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]

    # every step ran, in the guide's order (the loops once per object)
    ran = calls.read_text().split("\n")[:-1]
    assert ran == ["make_registry", "train_supervised", "train_supervised", "ros2 bag", "import_bag",
                   "train_detector", "detect", "train_selfsup", "train_selfsup", "distill", "export_onnx",
                   "ros2 launch"], ran

    # 1. the registry, against hand values (metres, mesh frame; the URDF link frame for the bracket)
    from pose6d_ros.registry import ObjectRegistry

    reg = ObjectRegistry.from_yaml(ws / "objects.yaml")
    assert reg.names == ["gear", "bracket"] and reg.ids == [1, 2]
    gear, bracket = reg.get("gear"), reg.get("bracket")
    np.testing.assert_allclose(gear.keypoints[0], [-0.03, -0.01, -0.01], atol=1e-9)
    np.testing.assert_allclose(gear.keypoints[7], [0.03, 0.05, 0.01], atol=1e-9)
    # the farthest vertex pair of the L: (30, -10, +-10) and (-30, 50, -+10) mm
    assert gear.diameter == pytest.approx(math.sqrt(0.06**2 + 0.06**2 + 0.02**2), abs=1e-9)
    np.testing.assert_allclose(bracket.keypoints[0], [-0.015, -0.015, -0.005], atol=1e-9)
    np.testing.assert_allclose(bracket.keypoints[7], [0.035, 0.015, 0.005], atol=1e-9)
    assert bracket.diameter == pytest.approx(math.sqrt(0.05**2 + 0.03**2 + 0.01**2), abs=1e-9)

    # 2-9. what each step writes
    for o in (1, 2):
        assert (ws / "synthetic" / str(o) / "model.pt").is_file()
        assert (ws / "selfsup" / str(o) / "model.pt").is_file()
    assert (ws / "bag" / "metadata.yaml").is_file()
    assert len(list((ws / "robot").glob("*/rgb/*.png"))) == 4
    assert (ws / "detector.pt").is_file()
    dets = json.loads((ws / "detections.json").read_text())
    assert {d["category_id"] for d in dets} == {1, 2}
    for o in (1, 2):
        assert f"self-supervised: {sum(d['category_id'] == o for d in dets)} unlabeled crops" in out
    assert (ws / "student" / "model.pt").is_file()
    from pose6d_ros.runtime.onnx_card import read_onnx_card

    card = read_onnx_card(ws / "model.onnx")  # the distilled student, both objects, the registry's keypoints
    assert list(card.object_ids) == [1, 2] and list(card.object_names) == ["gear", "bracket"]
    assert "teachers" in card.training
    np.testing.assert_allclose(np.asarray(card.keypoints), reg.keypoints(), atol=1e-6)

    # 10. both nodes came up on the guide's files
    assert f"pose estimator ready: model={ws / 'model.onnx'}" in out and "objects=['gear', 'bracket']" in out
    assert f"detector ready: model={ws / 'detector.pt'}" in out
