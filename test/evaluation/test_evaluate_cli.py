"""``evaluate`` as a user runs it: exit codes, stdout, result.json, --limit per object, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pose6d_ros.data import bop
from pose6d_ros.evaluation.evaluate import main

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"
IDS = (1, 2)
N_IMAGES = 3  # per object


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """A labelled BOP split: scene k holds object k (LINEMOD protocol), 3 noise images each."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("bop") / "test"
    K = np.array([[200.0, 0, 40], [0, 200.0, 32], [0, 0, 1]])
    for oid in IDS:
        cams = {i: bop.CameraRecord(K=K) for i in range(N_IMAGES)}
        gts = {i: [bop.GtRecord(obj_id=oid, R=np.eye(3), t=np.array([0.0, 0.0, 0.6]))] for i in range(N_IMAGES)}
        infos = {i: [bop.GtInfoRecord(bbox_obj=(20, 12, 40, 40), bbox_visib=(20, 12, 40, 40), px_count_all=1600,
                                      px_count_valid=1600, px_count_visib=1600, visib_fract=1.0)]
                 for i in range(N_IMAGES)}
        rgb = {i: rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for i in range(N_IMAGES)}
        bop.save_scene(out, bop.SceneRecord(scene_id=oid, cameras=cams, gts=gts, gt_infos=infos), rgb=rgb)
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from pose6d_ros.models import PoseNet
    from pose6d_ros.registry import ObjectRegistry, RunObjects
    from pose6d_ros.training.build import save_run_model

    torch.manual_seed(0)
    net = PoseNet.from_config({"backbone": "mobilenet_v3_small", "num_objects": len(IDS), "crop_size": 64})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_run_model(path, net, RunObjects(ObjectRegistry.from_yaml(OBJECTS), list(IDS)), crop_padding=1.3,
                          extra={"kind": "test"})


def _args(model_path, split, *extra):
    return ["--model", str(model_path), "--split", str(split), "--registry", str(OBJECTS), *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_limit_caps_each_object(model_path, split, tmp_path, capsys):
    """--limit 2 scores 2 instances of EACH object (a global cap kept only the first object)."""
    assert main(_args(model_path, split, "--limit", "2", "--out", str(tmp_path))) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["counts"] == {"duck": 2, "teddy": 2}
    assert res["limit_per_object"] == 2
    # the table reached stdout, readable
    out = capsys.readouterr().out
    assert "| duck | 2 |" in out and "| teddy | 2 |" in out


def test_console_script_exits_0_and_leaves_result_json(model_path, split):
    """The installed console script (``sys.exit(main())``): exit 0, the table on stdout, nothing
    like a Python repr on stderr, and result.json beside the model by default."""
    exe = shutil.which("evaluate", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the evaluate console script is not installed in this environment")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([exe, *_args(model_path, split)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| **mean** | 6 |" in r.stdout
    assert "RecallTable" not in r.stderr and "RecallTable" not in r.stdout
    res = json.loads((model_path.parent / f"eval-{split.parent.name}-test" / "result.json").read_text())
    assert res["counts"] == {"duck": N_IMAGES, "teddy": N_IMAGES}
    assert set(res["metrics"]) == {"ADD(-S)", "2D proj 5px"} and set(res["mean"]) == set(res["metrics"])


def test_split_without_scene_gt_names_the_missing_file(model_path, split, tmp_path, capsys):
    unlabeled = tmp_path / "test"
    shutil.copytree(split, unlabeled)
    (unlabeled / "000002" / "scene_gt.json").unlink()
    assert main(_args(model_path, unlabeled, "--out", str(tmp_path / "ev"))) == 2
    line = _error_line(capsys)
    assert str(unlabeled / "000002" / "scene_gt.json") in line and "no instances" not in line


def test_truncated_model_is_one_line_naming_it(model_path, split, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(model_path.read_bytes()[:4096])
    assert main(_args(bad, split)) == 2
    assert str(bad) in _error_line(capsys)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(_args(empty, split)) == 2
    assert str(empty) in _error_line(capsys)


def test_malformed_ply_is_one_line_naming_it(model_path, split, tmp_path, capsys):
    """A registry whose mesh is a malformed PLY (its diameter and keypoints given, so it is read only
    when the model points are needed, at scoring)."""
    import yaml

    reg = yaml.safe_load(OBJECTS.read_text())
    ply = tmp_path / "broken.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
                   "property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 1\n")
    reg["objects"] = [dict(o, mesh=str(ply), units="m", scale=1.0) for o in reg["objects"] if o["id"] in IDS]
    reg_path = tmp_path / "objects.yaml"
    reg_path.write_text(yaml.safe_dump(reg))
    args = ["--model", str(model_path), "--split", str(split), "--registry", str(reg_path), "--out", str(tmp_path)]
    assert main(args) == 2
    assert str(ply) in _error_line(capsys)
