"""The ``distill`` trainer on a tiny fixture: teachers picked per sample, resume, the exported student
(no adapters, ONNX parity, model card), one student serving several objects in the Estimator, errors.

The fixture: two lm-lite objects (duck, teddy), a BOP ``train/`` split of random images with boxes
(the unlabeled real crops), and one single-object MobileNetV3-small teacher per object whose last
layer's bias is set so the two teachers predict clearly different keypoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models  # noqa: F401  (before anything loads OSMesa)

from pose6d_ros.data.bop import CameraRecord, DetectionRecord, save_detections, save_rgb, save_scene_camera
from pose6d_ros.data.suites import load_suite_registry
from pose6d_ros.models import ModelCard, PoseNet, load_model, save_model
from pose6d_ros.training import distill
from pose6d_ros.training.config import load_recipe
from pose6d_ros.training.trainer import HookBase

S = 32  # a 2x2 feature map (stride 16): the head pools to 2x2 (model.head_pool), which ONNX exports
OBJECTS = (1, 2)
K_FULL = np.array([[572.4, 0.0, 160.0], [0.0, 573.6, 120.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def registry():
    return load_suite_registry("lm-lite")


@pytest.fixture(scope="module")
def root(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    dets = []
    for oid in OBJECTS:
        for i in range(4):
            save_rgb(root / "train", oid, i, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
            dets.append(DetectionRecord(oid, i, oid, 1.0, (90.0 + 10 * i, 70.0, 60.0, 50.0)))
        save_scene_camera(root / "train" / f"{oid:06d}" / "scene_camera.json",
                          {i: CameraRecord(K=K_FULL) for i in range(4)})
    save_detections(root / "train_detections.json", dets)
    for oid, offset in zip(OBJECTS, (0.3, -0.3)):
        torch.manual_seed(oid)
        net = PoseNet(backbone="mobilenet_v3_small", num_objects=1, crop_size=S, conditioning="none", head_pool=2)
        with torch.no_grad():
            net.head[-1].bias.fill_(offset)
        save_model(root / "teachers" / str(oid) / "model.pt", net,
                   ModelCard.for_model(net, registry, [oid], extra={"kind": "supervised-synthetic"}))
    return root


def _cfg(root: Path, out: Path, *overrides: str):
    return load_recipe(None, [
        f"data.root={root}", f"data.objects={list(OBJECTS)}", f"data.crop_size={S}",
        "model.backbone=mobilenet_v3_small", "model.conditioning=cin", "model.head_pool=2",
        "data.synthetic_per_object=16",
        "data.batch_size=4", "data.synthetic_batch_size=4", "data.synthetic_cache_dir=", "log.progress=false",
        "log.tensorboard=false", "optim.lr=1e-3", "optim.max_steps=6", "checkpoint.period=2", "init.freeze_bn=false",
        f"output_dir={out}", f"distill.teachers={root}/teachers/{{id}}/model.pt", *overrides])


def _teacher(root: Path, oid: int) -> PoseNet:
    return load_model(root / "teachers" / str(oid) / "model.pt")[0]


def test_each_sample_gets_its_own_classes_teacher(root, registry):
    from pose6d_ros.training.build import build_objects

    objects = build_objects(_cfg(root, root / "unused").data)
    student = PoseNet(backbone="mobilenet_v3_small", num_objects=2, crop_size=S)
    bank = distill.TeacherBank.load(str(root / "teachers" / "{id}" / "model.pt"), objects, student,
                                    torch.device("cpu"), hint=True)
    x, idx = torch.rand(5, 3, S, S), torch.tensor([1, 0, 0, 1, 1])
    h, f = bank(x, idx)
    teachers = [_teacher(root, oid) for oid in OBJECTS]
    with torch.no_grad():
        for i in range(5):  # the reference: teacher idx[i] run on sample i alone
            kp, feat = teachers[int(idx[i])](x[i:i + 1], torch.zeros(1, dtype=torch.long), return_features=True)
            torch.testing.assert_close(h[i:i + 1], kp, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(f[i:i + 1], feat, rtol=1e-5, atol=1e-6)
    assert (h[idx == 0] - h[idx == 1][:2]).abs().min() > 0.3  # the two teachers do differ (biases +-0.3)
    assert [r["object_id"] for r in bank.records] == list(OBJECTS)
    sha = hashlib.sha256((root / "teachers" / "1" / "model.pt").read_bytes()).hexdigest()
    assert bank.records[0]["sha256"] == sha and bank.records[0]["kind"] == "supervised-synthetic"


class _Interrupt(HookBase):
    """Stops the run after step ``at`` as a kill would: nothing after the last checkpoint survives."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer) -> None:
        if trainer.step == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def reference_run(root):
    out = root / "ref"
    res = distill.train(_cfg(root, out))
    return out, res


def test_resumed_run_matches_an_uninterrupted_one(root, reference_run):
    ref, _ = reference_run
    cut = root / "cut"
    with pytest.raises(KeyboardInterrupt):
        distill.train(_cfg(root, cut), hooks=[_Interrupt(3)])
    assert torch.load(cut / "last.pt", weights_only=False)["step"] == 2 and not (cut / "model.pt").exists()
    distill.train(_cfg(root, cut), resume=True)
    a, b = (torch.load(d / "last.pt", weights_only=False) for d in (ref, cut))
    assert a["step"] == b["step"] == 6
    assert any(k.startswith("adapters.") for k in a["model"])  # the adapters are part of the resumed state
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)
    for i, st in a["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(b["optimizer"]["state"][i][k], st[k], rtol=0, atol=0)
    assert [h["total"] for h in b["extra"]["history"]] == [h["total"] for h in a["extra"]["history"]]


def test_exported_student_has_no_adapters_and_onnx_matches_torch(root, reference_run, registry, tmp_path):
    import onnx

    from pose6d_ros.runtime import OnnxPredictor, export_onnx, read_onnx_card

    ref, _ = reference_run
    model, card = load_model(ref / "model.pt")
    last = torch.load(ref / "last.pt", weights_only=False)["model"]
    fresh = PoseNet.from_config(model.config)
    assert set(model.state_dict()) == set(fresh.state_dict())  # the student's entries, nothing else
    # the training checkpoint holds the student and the adapters: one 1x1 conv (C -> C) and bias per object
    C, N = 576, len(OBJECTS)
    assert set(last) == {f"student.{k}" for k in fresh.state_dict()} | {"adapters.weight", "adapters.bias"}
    assert last["adapters.weight"].shape == (N, C, C) and last["adapters.bias"].shape == (N, C)
    assert card.parameters == sum(p.numel() for p in fresh.parameters())
    assert card.object_ids == OBJECTS and card.conditioning == "cin" and card.macs_per_crop > 0
    assert card.training["kind"] == "distill" and card.training["loss"] == "kd_star" and card.training["hint"]
    assert [t["object_id"] for t in card.training["teachers"]] == list(OBJECTS)
    assert card.training["recipe"]["distill"]["teachers"] == f"{root}/teachers/{{id}}/model.pt"
    assert card.training["teachers_parameters"] == sum(
        sum(p.numel() for p in _teacher(root, o).parameters()) for o in OBJECTS)

    path = export_onnx(model, card, tmp_path / "student.onnx", exporter="torchscript")
    proto = onnx.load(str(path))
    assert not [i.name for i in proto.graph.initializer if "adapter" in i.name or list(i.dims) == [C, C, 1, 1]]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert int(meta["parameters"]) == card.parameters and int(meta["macs_per_crop"]) == card.macs_per_crop
    assert read_onnx_card(path).training["teachers"][1]["name"] == "teddy"
    session = OnnxPredictor(path, device="cpu").session
    x, idx = torch.rand(6, 3, S, S), torch.tensor([0, 1, 1, 0, 1, 0])
    (out,) = session.run(None, {"crops": x.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        ref_out = model(x, idx).numpy()
    assert np.abs(out - ref_out).max() <= 1e-4


class _Recording:
    """A real predictor that keeps what it returned (the normalised keypoints of each call)."""

    def __init__(self, inner) -> None:
        self.inner, self.card, self.device, self.calls = inner, inner.card, inner.device, []

    def predict(self, crops, object_index, detection_index):
        out = self.inner.predict(crops, object_index, detection_index)
        self.calls.append((object_index.tolist(), out.detach().cpu().clone()))
        return out


def test_one_student_serves_every_object_batched_in_torch_and_onnx(root, reference_run, registry, tmp_path):
    """Two detections of different objects in one frame: each row uses its own CIN γ/β, so the batched
    outputs equal each crop run alone with its object id (torch and ONNX Runtime, within 1e-4)."""
    from pose6d_ros.geometry.camera import CameraModel
    from pose6d_ros.runtime import Detection, Estimator, OnnxPredictor, TorchPredictor, export_onnx

    ref, _ = reference_run
    model, card = load_model(ref / "model.pt")
    with torch.no_grad():  # spread the rows of the CIN table: a wrong row then shows in the output
        model.conditioning.affine.normal_()
        model.head[-1].weight.normal_(std=0.1)
    onnx_path = export_onnx(model, card, tmp_path / "student.onnx", exporter="torchscript")
    camera = CameraModel(K=K_FULL, width=320, height=240)
    image = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    dets = [Detection(class_id="duck", box=(60.0, 50.0, 150.0, 140.0), score=0.9),
            Detection(class_id="teddy", box=(170.0, 80.0, 260.0, 200.0), score=0.8)]
    outputs = {}
    for name, predictor in (("torch", TorchPredictor(model, card)), ("onnx", OnnxPredictor(onnx_path, device="cpu"))):
        rec = _Recording(predictor)
        est = Estimator(rec, registry)
        est.estimate(image, camera, dets)
        est.estimate(image, camera, dets[:1])
        est.estimate(image, camera, dets[1:])
        (rows, together), (_, duck), (_, teddy) = rec.calls
        assert rows == [0, 1]
        np.testing.assert_allclose(together.numpy(), torch.cat([duck, teddy]).numpy(), atol=1e-4, rtol=0)
        outputs[name] = together
    np.testing.assert_allclose(outputs["onnx"].numpy(), outputs["torch"].numpy(), atol=1e-4, rtol=0)
    # the object id really selects the row: the same crops with the ids swapped give other keypoints
    crops_images = torch.rand(2, 3, S, S)
    with torch.no_grad():
        a = model(crops_images, torch.tensor([0, 1]))
        b = model(crops_images, torch.tensor([1, 0]))
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3


def test_student_learns_each_objects_teacher_from_unlabeled_crops(root):
    """KD* on unlabeled real crops only: the CIN student moves to the keypoints of each sample's own
    teacher (the two teachers are 0.3 apart in every coordinate, in opposite directions)."""
    out = root / "learn"
    res = distill.train(_cfg(root, out, "distill.synthetic=false", "distill.hint=false", "optim.max_steps=40",
                             "data.batch_size=8", "optim.lr=3e-3", "optim.grad_clip=0", "checkpoint.period=0"))
    model, _ = load_model(res["model"])
    from pose6d_ros.data.target_crops import TargetCrops, items_from_detections
    from pose6d_ros.training.build import build_objects

    objects = build_objects(_cfg(root, out).data)
    crops = TargetCrops(root / "train", items_from_detections(root / "train_detections.json", OBJECTS), objects, S)
    b = crops.batch(range(len(crops)), jitter=False, with_labels=False)
    teachers = [_teacher(root, oid) for oid in OBJECTS]
    with torch.no_grad():
        h_s = model(b["image"], b["object_index"])
        h_t = [t(b["image"], torch.zeros(len(crops), dtype=torch.long)) for t in teachers]  # every crop, both
    own = torch.stack([h_t[int(r)][i] for i, r in enumerate(b["object_index"])])
    other = torch.stack([h_t[1 - int(r)][i] for i, r in enumerate(b["object_index"])])
    err_own, err_other = (h_s - own).pow(2).flatten(1).sum(1), (h_s - other).pow(2).flatten(1).sum(1)
    # the untrained student outputs about 0, 18 coordinates x 0.3² = 1.62 from either teacher
    assert float(err_own.max()) < 0.5 * 1.62, err_own
    assert bool((err_own < 0.25 * err_other).all()), (err_own, err_other)


def test_cli_with_the_tiny_recipe(root, tmp_path):
    out = tmp_path / "cli"
    code = distill.main(["-c", str(Path(distill.__file__).parents[2] / "training" / "distill_tiny_cpu.yaml"),
                         "--set", f"data.root={root}", "--set", f"data.crop_size={S}", "--set", "optim.max_steps=2",
                         "--set", "data.synthetic_per_object=8", "--set", "data.synthetic_cache_dir=",
                         "--set", "data.batch_size=2", "--set", "data.synthetic_batch_size=2",
                         "--set", f"distill.teachers={root}/teachers/{{id}}/model.pt", "--output-dir", str(out)])
    assert code != 2 and (out / "model.pt").is_file() and (out / "last.pt").is_file()  # 2: bad input
    card = load_model(out / "model.pt")[1]
    assert card.training["recipe"]["model"]["backbone"] == "mobilenet_v3_small"


@pytest.mark.parametrize("overrides, message", [
    (("distill.teachers={1: nowhere.pt}",), r"no teacher for object 2 \(teddy\)"),
    (("distill.teachers=TEACHER1",),
     r"distill.teachers\[2\] \(teddy\).*objects \[1\], expected the single object \[2\]"),
    (("distill.teachers=",), "recipe key 'distill.teachers' is required by train_distill"),
    (("distill.loss=kl",), "recipe key 'distill.loss' must be one of 'kd_star', 'kd', 'gt'"),
    (("distill.hints=true",), "recipe key 'distill.hints' is unknown; did you mean 'distill.hint'"),
    (("distill.loss=gt", "distill.hint=false"), "distill.real=unlabeled: no loss uses unlabeled crops"),
    (("data.crop_padding=1.5",), r"distill.teachers\[1\] \(duck\).*padding 1.3, the student's data.crop_padding is 1.5"),
])
def test_bad_settings_are_named(root, tmp_path, overrides, message):
    overrides = tuple(o.replace("TEACHER1", str(root / "teachers" / "1" / "model.pt")) for o in overrides)
    with pytest.raises(ValueError, match=message):
        distill.train(_cfg(root, tmp_path / "bad", *overrides))
