"""ONNX export: parity with torch, model card round trip, registry mismatch refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from pose6d_ros.models import PoseNet, save_model
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime import (Detection, Estimator, OnnxPredictor, export_onnx, read_onnx_card,
                                select_providers)
from pose6d_ros.runtime.onnx_export import main as export_main

import _runtime_scene as scene
from _runtime_scene import box_object


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CIN model of 3 objects saved as a checkpoint and exported through the console script."""
    reg = scene.make_registry()
    card = scene.make_card(reg, note="test")
    torch.manual_seed(0)
    net = PoseNet(num_objects=3, crop_size=64)
    with torch.no_grad():
        net.conditioning.affine.normal_()
        net.head[-1].weight.normal_(std=0.1)
    net.eval()
    d = tmp_path_factory.mktemp("onnx")
    save_model(d / "model.pt", net, card)
    assert export_main([str(d / "model.pt"), str(d / "model.onnx"), "--exporter", "torchscript"]) == 0
    return d, net, card, reg


def test_parity_with_torch_on_a_mixed_class_batch(exported):
    d, net, card, _ = exported
    pred = OnnxPredictor(d / "model.onnx", device="cpu")
    assert pred.providers == ["CPUExecutionProvider"]
    crops = torch.rand(7, 3, 64, 64)
    idx = torch.tensor([2, 0, 1, 1, 2, 0, 2])  # batch of 7: the export example had 2
    (out,) = pred.session.run(None, {"crops": crops.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        ref = net(crops, idx).numpy()
    assert out.shape == (7, 9, 2)
    assert np.abs(out - ref).max() <= 1e-4
    # the class input really reaches the CIN table inside the graph
    (other,) = pred.session.run(None, {"crops": crops.numpy(), "object_index": ((idx + 1) % 3).numpy()})
    assert np.abs(other - out).max() > 1e-3


def test_metadata_round_trip(exported):
    d, _, card, _ = exported
    assert read_onnx_card(d / "model.onnx") == card
    proto = onnx.load(str(d / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["object_ids"]) == [1, 5, 7]
    assert json.loads(meta["object_names"]) == ["duck", "can", "cat"]
    np.testing.assert_array_equal(np.array(json.loads(meta["keypoints"])), card.keypoints_array)
    assert meta["crop_size"] == "64" and meta["backbone"] == "resnet18" and meta["conditioning"] == "cin"
    inputs = {i.name: i for i in proto.graph.input}
    assert set(inputs) == {"crops", "object_index"}
    assert inputs["crops"].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert inputs["object_index"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in inputs["crops"].type.tensor_type.shape.dim[1:]] == [3, 64, 64]


def test_estimator_on_onnx_matches_torch(exported, camera):
    d, net, card, reg = exported
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    dets = [Detection(class_id="duck", box=(100.0, 120.0, 200.0, 210.0), score=0.9),
            Detection(class_id="cat", box=(400.0, 50.0, 520.0, 150.0), score=0.7),
            Detection(class_id="can", box=(300.0, 200.0, 360.0, 330.0), score=0.8)]
    onnx_est = Estimator(d / "model.onnx", reg, backend="onnxruntime", device="cpu")
    torch_est = Estimator(d / "model.pt", reg, backend="torch", device="cpu")
    a = onnx_est.estimate(image, camera, dets)
    b = torch_est.estimate(image, camera, dets)
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.keypoints, pb.keypoints, atol=1e-2)
        assert pa.reason == pb.reason


def test_registry_mismatch_is_refused(exported):
    d, _, _, reg = exported
    wrong = ObjectRegistry([box_object(1, "duck", (0.03, 0.025, 0.02)), box_object(5, "can", (0.02, 0.02, 0.06)),
                            box_object(7, "cat", (0.035, 0.02, 0.03))])
    with pytest.raises(ValueError, match="does not match the object registry.*'can'"):
        Estimator(d / "model.onnx", wrong, device="cpu")
    missing = ObjectRegistry([box_object(1, "duck", (0.03, 0.025, 0.02))])
    with pytest.raises(ValueError, match="object id 5 .*not in the registry"):
        Estimator(d / "model.onnx", missing, device="cpu")


def test_foreign_onnx_file_is_refused(tmp_path):
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="plain.onnx: no pose6d_ros model card"):
        OnnxPredictor(tmp_path / "plain.onnx", device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxPredictor(tmp_path / "nope.onnx")


def test_provider_selection():
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    assert select_providers("cuda", providers=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    auto = select_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    if not torch.cuda.is_available():
        assert auto == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device"):
        select_providers("tpu")


@pytest.mark.slow
def test_dynamo_export_parity(exported, tmp_path):
    _, net, card, _ = exported
    path = export_onnx(net, card, tmp_path / "dynamo.onnx", exporter="dynamo")
    pred = OnnxPredictor(path, device="cpu")
    crops, idx = torch.rand(5, 3, 64, 64), torch.tensor([1, 0, 2, 2, 1])
    (out,) = pred.session.run(None, {"crops": crops.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        assert np.abs(out - net(crops, idx).numpy()).max() <= 1e-4
    assert read_onnx_card(path) == card


def test_int8_quantisation_keeps_card_and_stays_close(exported):
    from pose6d_ros.runtime import quantize_onnx

    d, net, card, _ = exported
    rng = np.random.default_rng(0)
    calib = rng.random((16, 3, 64, 64), dtype=np.float32)
    q = quantize_onnx(d / "model.onnx", d / "model.int8.onnx", calib)
    assert read_onnx_card(q) == card
    proto = onnx.load(str(q))
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    pred = OnnxPredictor(q, device="cpu")
    crops = torch.from_numpy(rng.random((5, 3, 64, 64), dtype=np.float32))
    idx = torch.tensor([2, 0, 1, 1, 2])
    (out,) = pred.session.run(None, {"crops": crops.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        ref = net(crops, idx).numpy()
    spread = np.abs(ref - ref.mean()).max()
    assert np.abs(out - ref).max() <= 0.1 * spread  # close, not equal: INT8
    alone = np.concatenate([pred.session.run(None, {"crops": crops[i:i + 1].numpy(),
                                                    "object_index": idx[i:i + 1].numpy()})[0] for i in range(5)])
    np.testing.assert_allclose(out, alone, atol=1e-6)
    with pytest.raises(ValueError, match="calibration_crops"):
        quantize_onnx(d / "model.onnx", d / "x.onnx", calib[:, :, :32])
    with pytest.raises(ValueError, match="method must be one of"):
        quantize_onnx(d / "model.onnx", d / "x.onnx", calib, method="kl")


def test_calibration_crops_are_the_estimator_crops_of_a_split(tmp_path, card):
    """``calibration_crops`` cuts what the Estimator would, checked against an OpenCV warp of the image."""
    from pose6d_ros.data.bop import CameraRecord, DetectionRecord, save_detections, save_rgb, save_scene_camera
    from pose6d_ros.data.crops import crop_image_cv2
    from pose6d_ros.runtime.onnx_export import calibration_crops

    split = tmp_path / "train"
    rng = np.random.default_rng(3)
    K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
    images = {i: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in (0, 1)}
    for i, img in images.items():
        save_rgb(split, 1, i, img)
    save_scene_camera(split / "000001" / "scene_camera.json", {i: CameraRecord(K=K) for i in images})
    dets = [DetectionRecord(1, 0, 7, 1.0, (100.0, 120.0, 60.0, 40.0)),   # cat -> card row 2
            DetectionRecord(1, 1, 1, 1.0, (600.0, 10.0, 39.0, 50.0)),    # duck -> row 0, window past the edge
            DetectionRecord(1, 1, 9, 1.0, (300.0, 300.0, 30.0, 30.0))]   # glue: not in the model, dropped
    save_detections(tmp_path / "dets.json", dets)
    crops, index = calibration_crops(split, card, detections=tmp_path / "dets.json")
    assert crops.shape == (2, 3, 64, 64) and crops.dtype == np.float32
    assert index.tolist() == [2, 0]
    for crop, d in zip(crops, dets[:2]):
        x, y, w, h = d.bbox
        box = np.array([x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5])  # BOP boxes span pixel centres
        c, half = (box[:2] + box[2:]) / 2, card.crop_padding * max(box[2] - box[0], box[3] - box[1]) / 2
        ref = crop_image_cv2(images[d.im_id].astype(np.float32) / 255.0,
                             np.concatenate([c - half, c + half]), card.crop_size)
        np.testing.assert_allclose(crop.transpose(1, 2, 0), ref, atol=2e-4)
    assert len(calibration_crops(split, card, detections=tmp_path / "dets.json", max_crops=1)[0]) == 1
    save_detections(tmp_path / "none.json", dets[2:])
    with pytest.raises(ValueError, match="no boxes of objects"):
        calibration_crops(split, card, detections=tmp_path / "none.json")
