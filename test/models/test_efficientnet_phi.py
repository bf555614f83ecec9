"""Φ on the ImageNet EfficientNet-Lite0 trunk: shapes and strides, the checkpoint and ONNX paths the
runtime uses, and the early blocks frozen during training (``init.freeze_early_stages``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose6d_ros.models import ModelCard, PoseNet, build_backbone, load_model, save_model
from pose6d_ros.models import pretrained as P
from pose6d_ros.runtime import OnnxPredictor, export_onnx, read_onnx_card
from pose6d_ros.runtime.onnx_export import main as export_main
from pose6d_ros.training.runner import FreezeEarlyHook
from pose6d_ros.training.supervised import supervised_step
from pose6d_ros.training.trainer import Trainer


def _card(num_objects: int, crop_size: int) -> ModelCard:
    kp = np.random.default_rng(0).uniform(-0.05, 0.05, (num_objects, 9, 3))
    return ModelCard.create(object_ids=range(1, num_objects + 1), object_names=[f"o{i}" for i in range(num_objects)],
                            keypoints=kp, crop_size=crop_size, backbone="efficientnet_lite0", conditioning="cin")


@pytest.mark.parametrize("small_input, stride", [(False, 32), (True, 16)])
@pytest.mark.parametrize("size", [64, 128])
def test_strides_and_channels(small_input, stride, size):
    bb = build_backbone("efficientnet_lite0", small_input=small_input, pretrained=False).eval()
    with torch.no_grad():
        out = bb(torch.rand(1, 3, size, size))
    assert bb.stride == stride and out.shape == (1, 1280, size // stride, size // stride)
    assert PoseNet(backbone="efficientnet_lite0", crop_size=64, pretrained=False).backbone.stride == 16  # 4 x 4
    assert PoseNet(backbone="efficientnet_lite0", crop_size=128, pretrained=False).backbone.stride == 32  # 4 x 4


@pytest.mark.parametrize("size", [64, 97, 224])
def test_trunk_equals_the_package_model(size):
    """The stages and the trace-friendly "SAME" padding compute what the package's own
    ``extract_features`` does (odd sizes included, where the padding is symmetric)."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(P.efficientnet_lite0_state_dict())
    bb = build_backbone("efficientnet_lite0", small_input=False).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(bb(x), ref.eval().extract_features(x), rtol=1e-5, atol=1e-5)


def test_input_is_rgb_scaled_to_minus_one_one():
    net = PoseNet(backbone="efficientnet_lite0", crop_size=64, pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(net.normalize(x), 2 * x - 1)
    imagenet = PoseNet(backbone="resnet18", crop_size=64)  # the other trunks keep ImageNet mean/std
    torch.testing.assert_close(imagenet.normalize(x)[:, 0], (x[:, 0] - 0.485) / 0.229)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    net = PoseNet(backbone="efficientnet_lite0", num_objects=3, crop_size=64)
    with torch.no_grad():
        net.conditioning.affine.normal_()
        net.head[-1].weight.normal_(std=0.1)
    net.eval()
    d = tmp_path_factory.mktemp("effnet")
    card = _card(3, 64)
    save_model(d / "model.pt", net, card)
    return d, net, card


def test_checkpoint_round_trip_does_not_read_the_imagenet_file(saved, monkeypatch):
    d, net, card = saved

    def refuse(*_a, **_k):
        raise AssertionError("load_model read the ImageNet weights file")

    monkeypatch.setattr(P, "efficientnet_lite0_state_dict", refuse)
    model, loaded = load_model(d / "model.pt")
    assert loaded.backbone == "efficientnet_lite0" and model.config["backbone"] == "efficientnet_lite0"
    assert model.config["pretrained"] is None  # recorded as built: the trunk's default (ImageNet)
    x, idx = torch.rand(4, 3, 64, 64), torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, idx), net(x, idx), rtol=0, atol=0)


def test_onnx_export_matches_torch(saved):
    d, net, card = saved
    assert export_main([str(d / "model.pt"), str(d / "model.onnx"), "--exporter", "torchscript"]) == 0
    pred = OnnxPredictor(d / "model.onnx", device="cpu")
    crops, idx = torch.rand(7, 3, 64, 64), torch.tensor([2, 0, 1, 1, 2, 0, 2])
    (out,) = pred.session.run(None, {"crops": crops.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        ref = net(crops, idx).numpy()
    assert out.shape == (7, 9, 2) and np.abs(out - ref).max() <= 1e-4
    assert read_onnx_card(d / "model.onnx").backbone == "efficientnet_lite0"


@pytest.mark.slow
def test_dynamo_onnx_export_matches_torch(saved, tmp_path):
    _, net, card = saved
    path = export_onnx(net, card, tmp_path / "dynamo.onnx", exporter="dynamo")
    crops, idx = torch.rand(5, 3, 64, 64), torch.tensor([1, 0, 2, 2, 1])
    (out,) = OnnxPredictor(path, device="cpu").session.run(None, {"crops": crops.numpy(), "object_index": idx.numpy()})
    with torch.no_grad():
        assert np.abs(out - net(crops, idx).numpy()).max() <= 1e-4


def test_frozen_early_blocks_keep_their_imagenet_state_through_training_steps():
    """The recipe's init.freeze_early_stages / freeze_early_steps (FreezeEarlyHook) on this trunk:
    Adam over every parameter, BatchNorm in training mode; the first two stages keep their ImageNet
    weights *and* running statistics, the later ones move; afterwards everything trains again."""
    torch.manual_seed(0)
    net = PoseNet(backbone="efficientnet_lite0", num_objects=2, crop_size=32).train()
    imagenet = P.efficientnet_lite0_state_dict()
    assert torch.equal(net.backbone.stages[0][0].weight, imagenet["_conv_stem.weight"])
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)  # over every parameter, as the trainers' optimizer
    data = {"image": torch.rand(4, 3, 32, 32), "keypoints": torch.rand(4, 9, 2) - 0.5,
            "object_index": torch.tensor([0, 1, 0, 1])}
    trainer = Trainer(model=net, step_fn=supervised_step(0.02), batches=lambda step, rank, world: data,
                      optimizer=opt, max_steps=2, hooks=[FreezeEarlyHook(2, steps=2)])
    trainer.train()
    after = net.state_dict()
    frozen = [k for k in after if k.startswith(("backbone.stages.0.", "backbone.stages.1."))]
    later = [k for k in after if k.startswith(("backbone.stages.2.", "backbone.stages.3.", "backbone.stages.4."))]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("weight") for k in frozen)
    unchanged = [k for k in frozen if not torch.equal(before[k], after[k])]
    assert not unchanged, f"frozen entries changed: {unchanged[:5]}"
    moved_params = [k for k in later if k.endswith(".weight") and not torch.equal(before[k], after[k])]
    moved_stats = [k for k in later if k.endswith("running_mean") and not torch.equal(before[k], after[k])]
    assert len(moved_params) > 0.9 * sum(k.endswith(".weight") for k in later)
    assert moved_stats  # unfrozen BatchNorm keeps learning its statistics
    assert all(p.requires_grad for p in net.parameters())  # the hook unfroze at step 2
    net.train()
    assert all(m.training for m in net.backbone.stages[0].modules())
