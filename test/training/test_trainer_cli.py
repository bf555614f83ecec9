"""The trainers as a user runs them: exit 0 and result.json on success; one line naming the file or
key and exit code 2 on bad input; config.yaml replaced atomically; --threads."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pose6d_ros.training.supervised import main as supervised_main

#: One step of a tiny network on 4 synthetic crops: seconds. No data.root needed (no diag/test split).
TINY = {"data": {"objects": [1], "crop_size": 64, "synthetic_per_object": 4, "batch_size": 2,
                 "synthetic_cache_dir": None, "diag_per_object": 0},
        "model": {"backbone": "mobilenet_v3_small"}, "optim": {"max_steps": 1, "lr": 1e-3},
        "log": {"tensorboard": False, "progress": False}, "checkpoint": {"period": 0}}


def _recipe(tmp_path: Path, **top) -> Path:
    cfg = {**TINY, "data": {**TINY["data"], "root": str(tmp_path / "no-data")}, **top}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_console_script_exits_0_prints_and_leaves_result_json(tmp_path):
    """The installed ``train_supervised`` (``sys.exit(main())``) exits 0 (it exited 1 with the result
    dict printed to stderr), says where the model and the result are, and leaves result.json."""
    exe = shutil.which("train_supervised", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the train_supervised console script is not installed in this environment")
    out = tmp_path / "run"
    r = subprocess.run([exe, "-c", str(_recipe(tmp_path, output_dir=str(out)))], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"model: {out / 'model.pt'}" in r.stdout and f"result: {out / 'result.json'}" in r.stdout
    assert "{'model'" not in r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["model"] == str(out / "model.pt") and res["steps"] == 1 and res["kind"] == "supervised-synthetic"
    assert (out / "model.pt").is_file()


def test_missing_output_dir_is_an_error_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert supervised_main(["-c", str(_recipe(tmp_path))]) == 2
    assert "'output_dir'" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()  # it used to train into ./runs/default


def test_config_yaml_is_replaced_atomically(tmp_path):
    """A new inode moved over the old (os.replace), never the old file truncated and rewritten: a
    hard link to the old config keeps the old text."""
    from pose6d_ros.training.config import load_recipe
    from pose6d_ros.training.runner import Run

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("old: true\n")
    os.link(out / "config.yaml", tmp_path / "old.yaml")
    Run(load_recipe(_recipe(tmp_path, output_dir=str(out))), "supervised")
    assert (tmp_path / "old.yaml").read_text() == "old: true\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["output_dir"] == str(out)


def test_threads_flag_and_recipe_key():
    from pose6d_ros.training.config import add_common_args, apply_threads, config_from_args, load_recipe

    import argparse

    before = torch.get_num_threads()
    try:
        args = add_common_args(argparse.ArgumentParser()).parse_args(["--threads", "1", "--set", "threads=3"])
        recipe = config_from_args(args)
        assert recipe.threads == 1  # the flag wins over the recipe
        assert apply_threads(recipe.threads) == 1 and torch.get_num_threads() == 1
        assert apply_threads(load_recipe(None).threads) is None and torch.get_num_threads() == 1  # default: untouched
        with pytest.raises(ValueError, match="'threads'"):
            load_recipe(None, ["threads=0"])
    finally:
        torch.set_num_threads(before)


def test_bad_recipe_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\nlr: 3\n")
    assert supervised_main(["-c", str(bad)]) == 2
    line = _error_line(capsys)
    assert str(bad) in line and "line 2" in line


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.parametrize("kind", ["crafted", "truncated"])
def test_resume_from_a_bad_last_pt_is_one_line_naming_it(tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    if kind == "crafted":
        torch.save({"step": 0, "model": {"w": _Payload(marker)}}, out / "last.pt")
    else:
        torch.save({"step": 0, "model": {"w": torch.zeros(100)}}, out / "last.pt")
        (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:300])
    assert supervised_main(["-c", str(_recipe(tmp_path, output_dir=str(out))), "--resume"]) == 2
    assert str(out / "last.pt") in _error_line(capsys)
    assert not marker.exists()


def test_truncated_init_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "init.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert supervised_main(["-c", str(_recipe(tmp_path, output_dir=str(tmp_path / "run"))),
                            "--set", f"init.checkpoint={bad}"]) == 2
    assert str(bad) in _error_line(capsys)


def test_selfsup_without_detections_file_names_it(tmp_path, capsys):
    from pose6d_ros.training.selfsup import main as selfsup_main

    (tmp_path / "no-data").mkdir()  # a suite folder without its detections file
    assert selfsup_main(["-c", str(_recipe(tmp_path, output_dir=str(tmp_path / "run")))]) == 2
    assert "train_detections.json" in _error_line(capsys)


def test_corrupt_synthetic_cache_is_rendered_again(tmp_path, capsys):
    """The shared synthetic pool (``data.synthetic_cache_dir``) is a cache: a truncated file is
    reported and replaced, the run goes on."""
    cache = tmp_path / "cache"
    recipe = str(_recipe(tmp_path))
    assert supervised_main(["-c", recipe, "--output-dir", str(tmp_path / "a"),
                            "--set", f"data.synthetic_cache_dir={cache}"]) == 0
    (pool,) = cache.glob("*.pt")
    pool.write_bytes(pool.read_bytes()[:500])
    assert supervised_main(["-c", recipe, "--output-dir", str(tmp_path / "b"),
                            "--set", f"data.synthetic_cache_dir={cache}"]) == 0
    assert torch.load(pool, weights_only=True)["have"].all()  # rewritten whole
