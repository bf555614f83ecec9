"""The estimator node at start-up: thread counts, parameters given with the wrong numeric type, and every
start-up error as one line with exit code 2 (never a traceback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node_fixtures import REGISTRY_YAML, ROOT, node_params


def test_num_threads_reaches_torch_and_onnx_runtime(node_setup, ros_context):
    """`num_threads` sets torch's pool and the ONNX Runtime session's intra-op pool (the node used to
    leave both at their defaults, one thread per core: 169-203 ms per small PnP batch on 2 busy cores)."""
    from pose6d_ros.ros.estimator_node import EstimatorNode

    _, _, model, _, _ = node_setup
    before = torch.get_num_threads()
    try:
        for n in (2, 1):
            node = EstimatorNode(context=ros_context, parameter_overrides=node_params(model, num_threads=n))
            try:
                assert torch.get_num_threads() == n
                options = node.estimator.predictor.session.get_session_options()
                assert options.intra_op_num_threads == n
                assert options.inter_op_num_threads == 1  # sequential execution: no inter-op pool
            finally:
                node.destroy_node()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, 65])
def test_num_threads_out_of_range_is_refused(bad):
    from pose6d_ros.ros.params import ParameterError, validate

    with pytest.raises(ParameterError, match=r"'num_threads': .* is outside \[1, 64\]"):
        validate({"model": "m.onnx", "objects": "o.yaml", "num_threads": bad})
    assert validate({"model": "m.onnx", "objects": "o.yaml", "num_threads": 3}).num_threads == 3


def test_an_int_for_a_double_parameter_is_accepted(node_setup, ros_context):
    """``-p min_score:=1`` (the command line types it as an int): rclpy used to fix each parameter's type
    from its default (a double) and raise InvalidParameterTypeException, a traceback with exit code 1.
    The node takes it as 1.0."""
    from pose6d_ros.ros.estimator_node import EstimatorNode

    _, _, model, _, _ = node_setup
    node = EstimatorNode(context=ros_context, cli_args=[
        "--ros-args", "-p", f"model:={model}", "-p", f"objects:={REGISTRY_YAML}", "-p", "min_score:=1",
        "-p", "warn_throttle_s:=2", "-p", "max_depth_m:=30"])
    try:
        p = node.params
        assert (p.min_score, p.warn_throttle_s, p.max_depth_m) == (1.0, 2.0, 30.0)
        assert all(isinstance(v, float) for v in (p.min_score, p.warn_throttle_s, p.max_depth_m))
        assert node.estimator.min_score == 1.0
    finally:
        node.destroy_node()


def _bad_models(registry, ids, model, tmp):
    """(case, node arguments, text the error line must contain) for every start-up error."""
    from pose6d_ros.models import ModelCard, PoseNet, save_model

    data = model.read_bytes()
    (tmp / "empty.onnx").write_bytes(b"")
    (tmp / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp / "corrupt.onnx").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    net = PoseNet(backbone="mobilenet_v3_small", num_objects=len(ids), crop_size=64)
    save_model(tmp / "whole.pt", net, ModelCard.for_model(net, registry, ids))
    whole = (tmp / "whole.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(whole[: len(whole) // 3])
    (tmp / "bad.yaml").write_text("objects: [ {id: 1, name: duck\n")
    objects = f"objects:={REGISTRY_YAML}"
    cases = [(name, ["-p", f"model:={tmp / name}", "-p", objects], str(tmp / name))
             for name in ("empty.onnx", "truncated.onnx", "corrupt.onnx", "truncated.pt")]
    cases += [
        ("yaml", ["-p", f"model:={model}", "-p", f"objects:={tmp / 'bad.yaml'}"], "parameter 'objects'"),
        ("float for int", ["-p", f"model:={model}", "-p", objects, "-p", "qos_depth:=5.0"], "parameter 'qos_depth'"),
        ("depth range", ["-p", f"model:={model}", "-p", objects, "-p", "min_depth_m:=3.0", "-p", "max_depth_m:=2"],
         "parameter 'max_depth_m'"),
    ]
    if not torch.cuda.is_available():
        cases.append(("cuda", ["-p", f"model:={model}", "-p", objects, "-p", "device:=cuda"],
                      "parameter 'device': 'cuda' requested, but no CUDA device"))
    return cases


def test_startup_errors_are_one_line_with_exit_code_2(node_setup, tmp_path, capfd):
    """Each used to end in a traceback with exit code 1 (or, for device:=cuda, a node that said cuda and
    ran on the CPU). Now ``main`` returns 2 after one line naming the file or the parameter. ``main``
    runs in this process with each case's command line (the console script is checked below)."""
    from pose6d_ros.ros.estimator_node import main

    registry, ids, model, _, _ = node_setup
    failures = []
    for case, args, needle in _bad_models(registry, ids, model, tmp_path):
        code = main(["estimator_node", "--ros-args", "--params-file", str(ROOT / "config" / "estimator.yaml"), *args])
        err = capfd.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("pose6d_estimator: error:")]
        if code != 2 or "Traceback" in err or len(errors) != 1 or needle not in errors[0]:
            failures.append(f"{case}: exit {code}\n{err}")
    assert not failures, "\n\n".join(failures)


def test_console_script_exits_2_with_one_line_for_a_truncated_model(node_setup, tmp_path):
    """The installed console script, as a process: exit code 2 and one line, no traceback."""
    from node_fixtures import NodeProcess

    _, _, model, _, _ = node_setup
    data = model.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    node = NodeProcess("-p", f"model:={tmp_path / 'truncated.onnx'}", "-p", f"objects:={REGISTRY_YAML}",
                       log_path=tmp_path / "node.log")
    code = node.proc.wait(timeout=120)
    node.stop()
    log = node.log()
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in log, log
    assert lines == [f"pose6d_estimator: error: ONNX model {tmp_path / 'truncated.onnx'}: cannot be loaded "
                     "(empty, truncated or not ONNX?): Protobuf parsing failed."], log
