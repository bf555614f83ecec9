"""Quiet, readable console output (pose6d_ros/_logs.py): library logs go to a file, progress bars stay on one line.

Each case runs a real process and reads what a user's terminal would get (its stdout and stderr), in the situation
of the demo: console logging at INFO already set up (``logging.basicConfig``, as the trainers do) when a library
talks. A control run without ``quiet_library_logs`` shows the noise is real, so the quiet run's silence means something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def _run(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                       timeout=timeout, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _visible_lines(text: str):
    """What a terminal shows: per line, the text after its last carriage return (tqdm redraws with '\\r')."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.split("\r")[-1].strip()]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from pose6d_ros.models import PoseNet
    from pose6d_ros.registry import ObjectRegistry, RunObjects
    from pose6d_ros.training.build import save_run_model

    torch.manual_seed(0)
    net = PoseNet.from_config({"backbone": "mobilenet_v3_small", "num_objects": 2, "crop_size": 64})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    objects = RunObjects(ObjectRegistry.from_yaml(OBJECTS), [1, 2])
    return save_run_model(path, net, objects, crop_padding=1.3, extra={"kind": "test"})


EXPORT = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # as a trainer before it, in the demo
    from pose6d_ros.runtime.onnx_export import main
    raise SystemExit(main(sys.argv[1:]))
"""


def test_export_onnx_prints_one_line_and_files_the_optimiser_log(tiny_model, tmp_path):
    out = tmp_path / "model.onnx"
    r = _run(EXPORT, str(tiny_model), str(out), "--registry", str(OBJECTS))
    console = (r.stdout + r.stderr).splitlines()
    assert len(console) <= 3, console  # was 25: the optimiser's INFO lines (onnxscript, onnx_ir)
    assert [line for line in r.stdout.splitlines() if line.startswith("wrote ")] == [
        next(line for line in console if line.startswith(f"wrote {out} "))]
    assert not [line for line in console if "onnxscript" in line or "onnx_ir" in line], console
    log = (tmp_path / "model.export.log").read_text().splitlines()
    assert sum(("onnxscript" in line or "onnx_ir" in line) for line in log) >= 5, log[:20]
    assert out.is_file()


BAR = """
    import contextlib, logging, sys, warnings
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm
    import onnx, onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    import pose6d_ros
    from pose6d_ros._logs import quiet_library_logs

    # a graph with an unused initializer: onnxruntime's C++ logger warns about it on stderr at session creation
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:],
                              initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "unused_init")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    ours = pose6d_ros.__file__  # a warning raised by our own code still reaches the console
    quiet = sys.argv[2] == "quiet"
    with (quiet_library_logs(sys.argv[1]) if quiet else contextlib.nullcontext()):
        with (quiet_library_logs(sys.argv[1] + ".inner") if quiet else contextlib.nullcontext()):
            pass  # a nested block (export_onnx's inside the demo's) leaves the outer one in force
        bar = tqdm(total=4, mininterval=0, file=sys.stderr, desc="train")
        for i in range(4):
            bar.update(1)
            logging.getLogger("pose6d_ros.training").info("step %d done", i)
            logging.getLogger("onnxscript.optimizer").info("optimiser chatter %d", i)
            logging.getLogger("pyrender").warning("renderer chatter %d", i)
            warnings.warn_explicit(f"library warning {i}", UserWarning, "/site-packages/somelib/mod.py", 10 + i)
            warnings.warn_explicit(f"our warning {i}", UserWarning, ours, 20 + i)
        bar.close()
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logging.getLogger("onnxscript").warning("after the block")
"""


def test_progress_bar_stays_on_one_line_and_library_chatter_goes_to_the_file(tmp_path):
    log = tmp_path / "run.log"
    plain = _run(BAR, str(log), "plain")
    shown = _visible_lines(plain.stderr)
    # the control: without it, log lines split the bar, and the chatter reaches the console
    assert any("%|" in line and "step" in line for line in shown), shown
    assert "optimiser chatter 0" in plain.stderr and "library warning 0" in plain.stderr
    assert "unused_init" in plain.stderr

    quiet = _run(BAR, str(log), "quiet")
    shown = _visible_lines(quiet.stderr)
    for i in range(4):
        assert f"step {i} done" in shown, shown  # a line of its own, not glued to the bar
        assert any(line.endswith(f"UserWarning: our warning {i}") for line in shown), shown
    assert not any("%|" in line and ("step" in line or "warning" in line) for line in shown), shown
    assert any(line.startswith("train: 100%|") for line in shown), shown
    for text in ("optimiser chatter", "renderer chatter", "library warning", "unused_init"):
        assert text not in quiet.stderr + quiet.stdout, (text, quiet.stderr)
    filed = log.read_text()
    for i in range(4):
        assert f"onnxscript.optimizer: optimiser chatter {i}" in filed
        assert f"pyrender: renderer chatter {i}" in filed
        assert f"library warning {i}" in filed
        assert f"our warning {i}" not in filed
    assert "after the block" in quiet.stderr and "after the block" not in filed  # restored on exit
