"""The pose network Φ: per-sample conditioning, freezing, BN handling, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pose6d_ros.models import ModelCard, PoseNet, available_backbones, build_backbone, load_model, save_model
from pose6d_ros.registry import ObjectInfo, ObjectRegistry


def _perturbed(net: PoseNet) -> PoseNet:
    """Give the conditioning and head non-trivial weights so objects really differ."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.conditioning.parameters():
            p.normal_()
        net.head[-1].weight.normal_(std=0.1)
    return net.eval()


def _card_and_registry(n: int = 3, crop_size: int = 64):
    objs = []
    for i in range(n):
        kp = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)] + [[0, 0, 0]],
                      dtype=np.float64) * 0.01 * (i + 2)
        objs.append(ObjectInfo(id=10 + i, name=f"obj{i}", mesh_path=Path("none.obj"), units="m", scale=1.0,
                               diameter=0.05, symmetries_discrete=np.zeros((0, 4, 4)),
                               symmetries_continuous=(), keypoints=kp))
    reg = ObjectRegistry(objs)
    card = ModelCard.create(object_ids=reg.ids, object_names=reg.names, keypoints=reg.keypoints(),
                            crop_size=crop_size, backbone="resnet18", conditioning="cin")
    return card, reg


@pytest.mark.parametrize("conditioning", ["cin", "onehot", "multi"])
def test_mixed_class_batch_equals_each_class_alone(conditioning):
    net = _perturbed(PoseNet(num_objects=3, crop_size=32, conditioning=conditioning))
    images = torch.rand(5, 3, 32, 32)
    idx = torch.tensor([2, 0, 1, 2, 0])
    with torch.no_grad():
        together = net(images, idx)
        alone = torch.cat([net(images[i:i + 1], idx[i:i + 1]) for i in range(5)])
        same_image_other_class = net(images, (idx + 1) % 3)
    assert together.shape == (5, 9, 2)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    # the class really selects something: same crops, other classes, other keypoints
    assert (together - same_image_other_class).abs().amax(dim=(1, 2)).min() > 1e-4


def test_multi_head_selects_the_samples_own_block():
    net = _perturbed(PoseNet(num_objects=4, num_keypoints=8, crop_size=32, conditioning="multi"))
    images = torch.rand(3, 3, 32, 32)
    idx = torch.tensor([3, 0, 2])
    with torch.no_grad():
        out = net(images, idx)
        x = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        every = net.head(net.backbone(x)).view(3, 4, 8, 2)  # all objects' outputs
    for b in range(3):
        torch.testing.assert_close(out[b], every[b, idx[b]])


def test_return_features_are_the_last_conv_before_conditioning():
    net = PoseNet(num_objects=2, crop_size=64).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        kp, feats = net(images, torch.tensor([0, 1]), return_features=True)
        x = (images - net.mean) / net.std
        reference = x
        for stage in net.backbone.stages:
            reference = stage(reference)
    assert kp.shape == (2, 9, 2) and feats.shape == (2, 512, 4, 4)
    torch.testing.assert_close(feats, reference)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vgg16"])
@pytest.mark.parametrize("small_input", [False, True])
def test_backbone_strides(name, small_input):
    bb = build_backbone(name, small_input=small_input).eval()
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, bb.out_channels, 64 // bb.stride, 64 // bb.stride)


def test_small_crops_do_not_end_on_2x2():
    assert PoseNet(crop_size=64).backbone.stride == 16  # 64 px -> 4 x 4
    assert PoseNet(crop_size=128).backbone.stride == 32  # 128 px -> 4 x 4
    assert set(available_backbones()) >= {"resnet18", "mobilenet_v3_small", "vgg16"}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_freeze_early_stops_gradients(backbone):
    net = PoseNet(backbone=backbone, num_objects=2, crop_size=32)
    net.freeze_early(2)
    before = [p.detach().clone() for p in net.backbone.stages[0].parameters()]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(torch.rand(2, 3, 32, 32), torch.tensor([0, 1])).square().sum().backward()
    for stage in net.backbone.stages[:2]:
        assert all(p.grad is None for p in stage.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.stages[2].parameters())
    opt.step()
    for b, p in zip(before, net.backbone.stages[0].parameters()):
        assert torch.equal(b, p)
    net.freeze_early(0)
    assert all(p.requires_grad for p in net.parameters())


def test_freeze_bn_keeps_running_statistics():
    net = PoseNet(num_objects=1, crop_size=32)
    bn = net.backbone.stages[0][1]
    net.freeze_bn()
    net.train()
    mean0 = bn.running_mean.clone()
    net(torch.rand(2, 3, 32, 32) * 5, torch.tensor([0, 0])).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, mean0)
    assert bn.weight.grad is not None  # affine BN parameters still learn
    net.freeze_bn(False)
    net(torch.rand(2, 3, 32, 32) * 5, torch.tensor([0, 0]))
    assert bn.training and not torch.equal(bn.running_mean, mean0)


def test_from_config_and_errors():
    net = PoseNet.from_config({"backbone": "mobilenet_v3_small", "num_objects": 2, "crop_size": 64})
    assert net.config["backbone"] == "mobilenet_v3_small" and net.config["small_input"] is True
    with pytest.raises(KeyError, match="bogus"):
        PoseNet.from_config({"bogus": 1})
    with pytest.raises(KeyError, match="unknown backbone"):
        PoseNet(backbone="nope")
    with pytest.raises(ValueError, match="conditioning"):
        PoseNet(conditioning="film")
    with pytest.raises(ValueError, match="images"):
        net(torch.rand(1, 3, 48, 48), torch.tensor([0]))


def test_save_load_round_trip(tmp_path):
    card, reg = _card_and_registry()
    net = _perturbed(PoseNet(num_objects=3, crop_size=64))
    path = tmp_path / "sub" / "model.pt"
    save_model(path, net, card)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, card2 = load_model(path)
    assert card2 == card and not loaded.training
    images, idx = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, idx), net(images, idx))
    card2.check_against(reg)
    assert card2.index_of(12) == 2


def test_card_mismatch_is_refused():
    card, reg = _card_and_registry()
    other_card, _ = _card_and_registry(n=2)
    bad_kp = card.keypoints_array.copy()
    bad_kp[1, 0, 0] += 0.001
    moved = ModelCard.create(object_ids=card.object_ids, object_names=card.object_names, keypoints=bad_kp,
                             crop_size=64, backbone="resnet18", conditioning="cin")
    with pytest.raises(ValueError, match="obj1.*keypoints differ"):
        moved.check_against(reg)
    renamed = ModelCard.create(object_ids=card.object_ids, object_names=["obj0", "x", "obj2"],
                               keypoints=card.keypoints_array, crop_size=64, backbone="resnet18",
                               conditioning="cin")
    with pytest.raises(ValueError, match="model says 'x'"):
        renamed.check_against(reg)
    _, small_reg = _card_and_registry(n=2)
    with pytest.raises(ValueError, match="object id 12 .* not in the registry"):
        card.check_against(small_reg)
    other_card.check_against(reg)  # a subset of the registry is fine
    with pytest.raises(ValueError, match="fit the model"):
        save_model("unused.pt", PoseNet(num_objects=3, crop_size=128), card)


def test_load_refuses_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt"):
        load_model(tmp_path / "x.pt")
