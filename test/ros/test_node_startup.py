"""The estimator node at start-up: thread counts, parameters given with the wrong numeric type, and every
start-up error as one line with exit code 2 (never a traceback)."""

from __future__ import annotations

import pytest
import torch

from node_fixtures import node_params


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
