"""The crop padding travels in the model card: a model made for padding 1.5 is evaluated and served
at 1.5 (``evaluate``, the Estimator from the ``.pt`` and from its ONNX export).

The network is a stand-in whose output does not depend on the image: its last layer puts out the
keypoints of one fixed pose as they fall in a crop cut with padding 1.5 (computed here by hand from
docs/conventions.md). Cropped with 1.5, PnP on those keypoints gives that pose back exactly; cropped
with any other padding, the window (hence ``K_crop``) differs and the pose comes out at the wrong
depth. So the recovered pose tells which padding was used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pose6d_ros.data import bop
from pose6d_ros.evaluation.evaluate import main as evaluate_main
from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.models import ModelCard, PoseNet, load_model, save_model
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime import Detection, Estimator, export_onnx, read_onnx_card

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"
OID = 1
S = 64
PADDING = 1.5
K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
R_GT = np.eye(3)
T_GT = np.array([0.01, -0.02, 0.6])
BBOX = (280, 190, 60, 50)  # BOP (x, y, w, h): spans pixel centres x .. x + w


def _window(padding: float) -> np.ndarray:
    """The square window around BBOX: edges half a pixel outside the centres it spans, side
    ``padding`` x the longer side."""
    x, y, w, h = BBOX
    x0, y0, x1, y1 = x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5
    c, half = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), padding * max(x1 - x0, y1 - y0) / 2
    return np.r_[c - half, c + half]


def _target_keypoints(kp3: np.ndarray, padding: float) -> np.ndarray:
    """``(9, 2)`` normalised crop coordinates of the keypoints at the GT pose in the window of ``padding``:
    u_crop = (u - x0) S / (x1 - x0) - 0.5, n = (u_crop + 0.5) 2 / S - 1."""
    x = (kp3 @ R_GT.T + T_GT) @ K.T
    uv = x[:, :2] / x[:, 2:]
    x0, y0, x1, y1 = _window(padding)
    u_crop = np.stack([(uv[:, 0] - x0) * S / (x1 - x0) - 0.5, (uv[:, 1] - y0) * S / (y1 - y0) - 0.5], 1)
    return (u_crop + 0.5) * 2 / S - 1


@pytest.fixture(scope="module")
def registry() -> ObjectRegistry:
    return ObjectRegistry.from_yaml(OBJECTS)


def _save(registry: ObjectRegistry, path: Path, card_padding: float) -> Path:
    """The stand-in network (keypoints of padding 1.5) saved with a card that says ``card_padding``."""
    torch.manual_seed(0)
    net = PoseNet.from_config({"backbone": "mobilenet_v3_small", "num_objects": 1, "crop_size": S,
                               "conditioning": "none"})
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.copy_(torch.from_numpy(_target_keypoints(registry.get(OID).keypoints, PADDING)).flatten())
    save_model(path, net.eval(), ModelCard.for_model(net, registry, [OID], crop_padding=card_padding))
    return path


@pytest.fixture(scope="module")
def models(registry, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {p: _save(registry, d / f"pad{p}.pt", p) for p in (PADDING, 1.3)}


@pytest.fixture(scope="module")
def onnx_model(models, tmp_path_factory) -> Path:
    return export_onnx(*load_model(models[PADDING]), tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """Scene 1 (object 1, the LINEMOD protocol's target), two images of the object at the GT pose."""
    out = tmp_path_factory.mktemp("bop") / "test"
    rgb = {i: np.zeros((480, 640, 3), np.uint8) for i in range(2)}
    info = bop.GtInfoRecord(bbox_obj=BBOX, bbox_visib=BBOX, px_count_all=1, px_count_valid=1, px_count_visib=1,
                            visib_fract=1.0)
    bop.save_scene(out, bop.SceneRecord(
        scene_id=OID, cameras={i: bop.CameraRecord(K=K) for i in rgb},
        gts={i: [bop.GtRecord(obj_id=OID, R=R_GT, t=T_GT)] for i in rgb}, gt_infos={i: [info] for i in rgb}), rgb=rgb)
    return out


def test_the_card_carries_the_padding(models, onnx_model):
    assert load_model(models[PADDING])[1].crop_padding == PADDING
    assert read_onnx_card(onnx_model).crop_padding == PADDING


@pytest.mark.parametrize("card_padding, recall", [(PADDING, 100.0), (1.3, 0.0)])
def test_evaluate_crops_with_the_cards_padding(models, split, tmp_path, card_padding, recall):
    out = tmp_path / "ev"
    assert evaluate_main(["--model", str(models[card_padding]), "--split", str(split), "--registry", str(OBJECTS),
                          "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["rows"]["duck"]["ADD(-S)"] == pytest.approx(recall) and res["counts"]["duck"] == 2


def _serve(model, registry) -> np.ndarray:
    x, y, w, h = BBOX
    est = Estimator(str(model), registry, backend="auto", device="cpu")
    (pose,) = est.estimate(np.zeros((480, 640, 3), np.uint8), CameraModel(K=K, width=640, height=480),
                           [Detection(class_id="duck", box=(x - 0.5, y - 0.5, x + w + 0.5, y + h + 0.5), score=0.9)])
    assert pose.ok, pose.reason
    return pose.t


def test_the_estimator_serves_at_the_cards_padding(models, onnx_model, registry):
    np.testing.assert_allclose(_serve(models[PADDING], registry), T_GT, atol=1e-4)
    np.testing.assert_allclose(_serve(onnx_model, registry), T_GT, atol=1e-4)
    # the same network under a card that says 1.3: the smaller window makes the same crop keypoints
    # span fewer image pixels, so the object comes out 1.5 / 1.3 times farther
    assert abs(_serve(models[1.3], registry)[2] - T_GT[2] * PADDING / 1.3) < 0.005
