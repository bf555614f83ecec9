"""Model files that cannot be used fail with one ``ModelLoadError`` (a ValueError) naming the file, and a
device that is not there fails instead of silently running on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pose6d_ros.models import PoseNet, save_model
from pose6d_ros.models.pose_net import CHECKPOINT_FORMAT, ModelLoadError, load_model
from pose6d_ros.runtime import make_predictor

import _runtime_scene as scene


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    reg = scene.make_registry()
    net = PoseNet(backbone="mobilenet_v3_small", num_objects=3, crop_size=64)
    save_model(d / "whole.pt", net, scene.make_card(reg))
    whole = (d / "whole.pt").read_bytes()
    (d / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (d / "empty.pt").write_bytes(b"")
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"backbone": "no_such_net"}, "state_dict": {}, "card": {}},
               d / "damaged.pt")
    # a valid ONNX graph (identity) without our model card in its metadata
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "no_card.onnx")
    no_card = (d / "no_card.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(no_card[: len(no_card) // 2])
    (d / "empty.onnx").write_bytes(b"")
    (d / "corrupt.onnx").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return d


@pytest.mark.parametrize("name,needle", [
    ("empty.onnx", "No graph was found"),
    ("truncated.onnx", "Protobuf parsing failed"),
    ("corrupt.onnx", "Protobuf parsing failed"),
    ("no_card.onnx", "metadata"),
    ("truncated.pt", "failed reading zip archive"),
    ("empty.pt", "cannot read model checkpoint"),
    ("damaged.pt", "damaged"),
])
def test_unusable_model_files_raise_one_line_naming_the_file(files, name, needle):
    with pytest.raises(ModelLoadError) as info:
        make_predictor(files / name, device="cpu")
    text = str(info.value)
    assert str(files / name) in text and needle in text and "\n" not in text, text
    assert isinstance(info.value, ValueError)


def test_a_good_checkpoint_still_loads(files):
    model, card = load_model(files / "whole.pt")
    assert tuple(card.object_ids) == (1, 5, 7) and not model.training


def test_missing_file_is_file_not_found(files):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        make_predictor(files / "nope.onnx", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("name", ["whole.pt", "no_card.onnx"])
def test_cuda_without_cuda_fails_instead_of_running_on_the_cpu(files, name):
    with pytest.raises(ValueError, match=r"device: 'cuda' requested, but no CUDA device is usable"):
        make_predictor(files / name, device="cuda")
