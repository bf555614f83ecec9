"""The shared input checker names the argument and enforces repeated size names."""

import pytest
import torch

from pose6d_ros._checks import check_shape


def test_check_shape_enforces_named_sizes():
    check_shape(torch.zeros(2, 4, 4), ("B", "S", "S"), "img")
    with pytest.raises(ValueError, match="img"):
        check_shape(torch.zeros(2, 4, 5), ("B", "S", "S"), "img")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        check_shape(torch.zeros(2, 4, 2), ("B", "N", 3), "pts")
    check_shape(torch.zeros(7, 2, 9, 3), ("...", "N", 3), "pts")


# ---- run_cli: what every console script does with bad input ---------------------------------------
def test_run_cli_exit_codes_and_one_line(capsys, monkeypatch):
    from pose6d_ros._checks import TRACEBACK_ENV, InputError, reading, run_cli

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run_cli("prog", lambda: {"a": 1}) == 0  # a result object is not an exit code
    assert run_cli("prog", lambda: 3) == 3

    def bad():
        raise ValueError("data/x.json: invalid JSON\nmore detail")

    assert run_cli("prog", bad) == 2
    assert capsys.readouterr().err == "prog: error: data/x.json: invalid JSON\n"

    def missing():
        raise KeyError("object id 7 is not in the registry")

    assert run_cli("prog", missing) == 2
    assert capsys.readouterr().err == "prog: error: object id 7 is not in the registry\n"

    def unnamed():
        with reading("models/m.pt", "--model"):
            raise RuntimeError("PytorchStreamReader failed reading zip archive")

    assert run_cli("prog", unnamed) == 2
    err = capsys.readouterr().err
    assert err == "prog: error: --model models/m.pt: PytorchStreamReader failed reading zip archive\n"
    with pytest.raises(InputError):  # reading() alone: an exception naming the file
        unnamed()

    def bug():
        raise TypeError("a bug keeps its traceback")

    with pytest.raises(TypeError):
        run_cli("prog", bug)
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError):
        run_cli("prog", bad)


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_export_onnx_bad_checkpoint_is_one_line(tmp_path, capsys):
    from pose6d_ros.runtime.onnx_export import main

    for name, data in (("trunc.pt", b"PK\x03\x04" + bytes(100)), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        assert main([str(tmp_path / name), str(tmp_path / "m.onnx")]) == 2
        assert str(tmp_path / name) in _one_error_line(capsys)
    assert main([str(tmp_path / "none.pt"), str(tmp_path / "m.onnx")]) == 2
    assert "none.pt" in _one_error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_build_suite_bad_arguments_are_one_line(tmp_path, capsys):
    from pose6d_ros.data.build import main

    assert main(["--suite", "lm-lite", "--out", str(tmp_path / "x"), "--objects", "99"]) == 2
    assert "[99]" in _one_error_line(capsys) and not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    assert main(["--suite", "lm-lite", "--out", str(tmp_path / "file"), "--objects", "1"]) == 2
    assert str(tmp_path / "file") in _one_error_line(capsys)


def test_build_suite_console_script_exits_0(tmp_path):
    """It returned its summary dict, which ``sys.exit`` printed to stderr with exit code 1."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("build_suite", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the build_suite console script is not installed in this environment")
    out = tmp_path / "suite"
    r = subprocess.run([exe, "--suite", "lm-lite", "--out", str(out), "--objects", "1", "--images-per-object", "1",
                        "--workers", "1"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"result: {out / 'build_info.json'}" in r.stdout and "{'suite'" not in r.stderr
    assert json.loads((out / "build_info.json").read_text())["counts"]["test"] == 1
