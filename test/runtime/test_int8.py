"""The INT8 graph of a trained Φ, calibrated on real crops, against the fp32 graph and ground truth.

Crops are rendered views of the model's own objects at known poses (``data.synthetic``), so the
reference is the ground-truth projection of the box keypoints and the ground-truth pose, not the
network. Needs a trained checkpoint: ``POSE6D_TRAINED_MODEL`` or the one ``make demo`` writes
(``runs/demo/pose/synthetic/model.pt``); an untrained network's keypoints say nothing about the
object, so without one the test is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops
from pose6d_ros.geometry.camera import normalized_to_pixels
from pose6d_ros.geometry.keypoints import transform_points
from pose6d_ros.geometry.pnp import solve_pnp
from pose6d_ros.models import load_model
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime import OnnxPredictor, export_onnx, quantize_onnx, read_onnx_card

ROOT = Path(__file__).resolve().parents[2]
TRAINED = Path(os.environ.get("POSE6D_TRAINED_MODEL", ROOT / "runs" / "demo" / "pose" / "synthetic" / "model.pt"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not TRAINED.is_file(), reason=f"no trained checkpoint at {TRAINED} (run `make demo` or set POSE6D_TRAINED_MODEL)")]


def _rendered(registry: ObjectRegistry, card, n: int, seed: int) -> dict:
    """``n`` labelled crops of the card's objects; ``row`` is each crop's row of the model card."""
    ds = SyntheticCrops(registry, n, SyntheticConfig(size=card.crop_size, object_ids=list(card.object_ids)),
                        seed=seed)
    b = ds.batch(range(n))
    b["row"] = torch.as_tensor([card.object_ids.index(int(o)) for o in b["obj_id"]])
    return b


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    net, card = load_model(TRAINED)
    registry = ObjectRegistry.from_yaml(ROOT / "config" / "objects_lm_lite.yaml")
    card.check_against(registry)
    d = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(net, card, d / "model.onnx", exporter="dynamo")
    calib = _rendered(registry, card, 64, seed=7)
    int8 = quantize_onnx(fp32, d / "model.int8.onnx", calib["image"].numpy(), calib["row"].numpy(),
                         source="test: 64 rendered crops")
    noise = np.random.default_rng(0).random(calib["image"].shape, dtype=np.float32)
    int8_noise = quantize_onnx(fp32, d / "model.noise.onnx", noise, calib["row"].numpy())
    test = _rendered(registry, card, 96, seed=11)  # other poses, backgrounds and lights than calibration
    return card, registry, fp32, int8, int8_noise, test


def _keypoints(path: Path, test: dict, size: int) -> torch.Tensor:
    """Crop-pixel keypoints ``(B, K, 2)`` of the test crops from the ONNX graph at ``path``."""
    session = OnnxPredictor(path, device="cpu").session
    (out,) = session.run(None, {"crops": test["image"].numpy(), "object_index": test["row"].numpy()})
    return normalized_to_pixels(torch.from_numpy(out).double(), size)


def _pose_error(uv: torch.Tensor, test: dict, card, registry: ObjectRegistry) -> torch.Tensor:
    """PnP from the keypoints in each crop (its own K), then the mean distance of the box keypoints
    from their ground-truth position, as a fraction of the object diameter (ADD over the box)."""
    kp3 = torch.as_tensor(card.keypoints_array, dtype=torch.float64)[test["row"]]
    pnp = solve_pnp(uv, kp3, test["K_crop"].double())
    R_gt, t_gt = test["R"].double(), test["t"].double()
    add = (transform_points(kp3, pnp.R, pnp.t) - transform_points(kp3, R_gt, t_gt)).norm(dim=-1).mean(dim=1)
    diameter = torch.as_tensor([registry.get(int(o)).diameter for o in test["obj_id"]], dtype=torch.float64)
    return torch.where(pnp.failed, torch.full_like(add, float("inf")), add / diameter)


def test_int8_card_and_calibration_source(graphs):
    card, _, _, int8, _, _ = graphs
    assert read_onnx_card(int8) == card
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["quantization"] == "int8-static-qdq-minmax"
    assert meta["quantization_calibration"] == "64 crops; test: 64 rendered crops"


def test_int8_keypoints_stay_close_to_fp32_and_to_ground_truth(graphs):
    card, registry, fp32, int8, int8_noise, test = graphs
    S = card.crop_size
    gt = test["keypoints_px"].double()
    kp32, kp8 = _keypoints(fp32, test, S), _keypoints(int8, test, S)
    gap = (kp8 - kp32).norm(dim=-1)  # crop px
    assert gap.median() < 1.0 and torch.quantile(gap.flatten(), 0.9) < 2.5

    # Against ground truth, INT8 is (almost) as good as fp32: the quantisation error is small
    # next to the network's own.
    err32 = (kp32 - gt).norm(dim=-1).mean(dim=1)
    err8 = (kp8 - gt).norm(dim=-1).mean(dim=1)
    assert err32.median() < 0.25 * S  # the checkpoint is trained: its keypoints are on the object
    assert abs(err8.median() - err32.median()) < 0.5

    # Pose from PnP on the INT8 keypoints, against the ground-truth pose.
    add32, add8 = _pose_error(kp32, test, card, registry), _pose_error(kp8, test, card, registry)
    assert torch.isfinite(add8).float().mean() >= torch.isfinite(add32).float().mean() - 0.02
    assert abs(add8.median() - add32.median()) < 0.02  # fraction of the diameter
    assert abs((add8 < 0.1).float().mean() - (add32 < 0.1).float().mean()) <= 0.03

    # The check can tell a bad quantisation: ranges from random pixels move the keypoints further.
    gap_noise = (_keypoints(int8_noise, test, S) - kp32).norm(dim=-1)
    assert gap_noise.median() > 3.0 * gap.median()
