"""Each loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pose6d_ros.training import losses as L


class TestHuber:
    def test_hand_values(self, dtype):
        # errors 0.01 (quadratic: 0.5*1e-4) and 0.05 (linear: 0.02*(0.05-0.01)=8e-4), delta 0.02
        pred = torch.tensor([[0.01, -0.05]], dtype=dtype)
        got = L.huber(pred, torch.zeros_like(pred), delta=0.02)
        assert got.item() == pytest.approx((0.5e-4 + 8e-4) / 2, rel=1e-5)

    def test_weight_drops_rejected_samples(self):
        pred = torch.tensor([[1.0], [100.0]])
        got = L.huber(pred, torch.zeros_like(pred), delta=2.0, weight=torch.tensor([1.0, 0.0]))
        assert got.item() == pytest.approx(0.5)

    def test_all_rejected_is_zero_not_nan(self):
        pred = torch.ones(2, 3, requires_grad=True)
        got = L.huber(pred, torch.zeros(2, 3), weight=torch.zeros(2))
        got.backward()
        assert got.item() == 0.0 and torch.all(pred.grad == 0)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="pred"):
            L.huber(torch.zeros(2, 3), torch.zeros(2, 4))


def test_pose_losses_hand_values():
    h1 = torch.zeros(1, 2, 2)
    h2 = torch.tensor([[[0.1, 0.0], [0.0, 0.0]]])
    h3 = torch.tensor([[[0.1, 0.0], [0.0, 0.01]]])
    # delta 0.02: h2-h3 has one 0.01 entry -> 0.5e-4 / 4 elements
    assert L.pose_consistency(h2, h3).item() == pytest.approx(0.5e-4 / 4, rel=1e-5)
    # h1-h2 has one 0.1 entry -> 0.02*(0.1-0.01) / 4
    assert L.pose_consistency2(h1, h2).item() == pytest.approx(0.02 * 0.09 / 4, rel=1e-5)
    with pytest.raises(ValueError, match="h2"):
        L.pose_consistency(torch.zeros(1, 9, 3), h3)


def test_synthetic_supervision_hand_value_and_stop_gradient():
    h3 = torch.tensor([[[0.01, 0.0]]], requires_grad=True)
    label = torch.tensor([[[0.0, 0.0]]], requires_grad=True)
    hg_pred = torch.tensor([[[0.0, 0.03]]])
    hg = torch.zeros(1, 1, 2)
    got = L.synthetic_supervision(h3, label, hg_pred, hg, delta=0.02)
    expect = 0.5e-4 / 2 + 0.02 * (0.03 - 0.01) / 2
    assert got.item() == pytest.approx(expect, rel=1e-5)
    got.backward()
    assert label.grad is None  # sg[π(y1)]
    assert h3.grad is not None and h3.grad[0, 0, 0].item() == pytest.approx(0.01 / 2)


def test_perceptual_hand_value():
    # one layer, 2 channels, 1x2 pixels; pixel 0: (1,0) vs (0,1) -> |diff|^2 = 2; pixel 1: (3,4) vs (6,8) -> 0
    fa = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])
    fb = torch.tensor([[[[0.0, 6.0]], [[1.0, 8.0]]]])
    assert L.perceptual_distance([fa], [fb]).item() == pytest.approx(1.0, rel=1e-6)
    # two layers: second identical -> mean over layers halves it
    assert L.perceptual_distance([fa, fa], [fb, fa]).item() == pytest.approx(0.5, rel=1e-6)
    # scale invariance per pixel (the LPIPS normalisation)
    assert L.perceptual_distance([fa * 7], [fb]).item() == pytest.approx(1.0, rel=1e-6)
    # region-weighted mean: pixel weights (0.25, 0.75) -> (0.25 * 2 + 0.75 * 0) / 1 = 0.5; a region
    # on pixel 0 only -> 2 whatever its size (the silhouette mean has no size bias)
    r = torch.tensor([[[[0.25, 0.75]]]])
    assert L.perceptual_distance([fa], [fb], region=r).item() == pytest.approx(0.5, rel=1e-6)
    for w0 in (1.0, 0.1):
        r0 = torch.tensor([[[[w0, 0.0]]]])
        assert L.perceptual_distance([fa], [fb], region=r0).item() == pytest.approx(2.0, rel=1e-6)
    # the region is resized to the layer: a 1x4 region over a 1x2 layer averages pairs
    r4 = torch.tensor([[[[0.5, 0.0, 0.25, 0.25]]]])  # -> (0.25, 0.25): equal weights -> 1.0
    assert L.perceptual_distance([fa], [fb], region=r4).item() == pytest.approx(1.0, rel=1e-6)


def test_mask_blend_hand_value():
    x = torch.full((1, 3, 1, 2), 0.8)
    m = torch.tensor([[[[1.0, 0.25]]]])
    got = L.mask_blend(x, m, background=0.4)
    assert torch.allclose(got[0, :, 0, 0], torch.tensor(0.8))
    assert torch.allclose(got[0, :, 0, 1], torch.tensor(0.25 * 0.8 + 0.75 * 0.4))


def test_total_loss_weights():
    parts = {"pose": torch.tensor(1.0), "pose2": torch.tensor(2.0), "sup": torch.tensor(3.0), "percep": torch.tensor(0.5)}
    assert L.total_loss(parts).item() == pytest.approx(1 + 2 + 3 + 20 * 0.5)
    assert L.total_loss({"sup": torch.tensor(3.0)}, L.LossWeights(sup=2.0)).item() == pytest.approx(6.0)
    with pytest.raises(KeyError):
        L.total_loss({"pse": torch.tensor(1.0)})


def test_box_consistency_hand_values():
    h = torch.tensor([[[0.0, 0.0], [0.2, 0.1]]], requires_grad=True)
    pose_box = torch.tensor([[-0.1, -0.1, 0.3, 0.2]])  # 0.4 x 0.3, centre (0.1, 0.05)
    # detection twice as large, centre (0.4, 0.3): target = c_det + 2 (h - c_pose)
    # = (0.2, 0.2), (0.6, 0.4); errors (-0.2, -0.2), (-0.4, -0.3); quadratic Huber (delta 1)
    loss = L.box_consistency(h, pose_box, torch.tensor([[0.0, 0.0, 0.8, 0.6]]), delta=1.0)
    assert loss.item() == pytest.approx(0.5 * (0.04 + 0.04 + 0.16 + 0.09) / 4)
    loss.backward()
    assert torch.allclose(h.grad, torch.tensor([[[-0.2, -0.2], [-0.4, -0.3]]]) / 4)  # target is detached
    # x truncated (ratio 1 against s = 2): scale 2 about the pose centre, shift along y only:
    # targets (0.1 - 0.2, 0.3 - 0.1) = (-0.1, 0.2) and (0.3, 0.4)
    loss = L.box_consistency(h, pose_box, torch.tensor([[0.0, 0.0, 0.4, 0.6]]), delta=1.0)
    assert loss.item() == pytest.approx(0.5 * (0.01 + 0.04 + 0.01 + 0.09) / 4)
    # the pose already spans the box: no loss
    assert L.box_consistency(h, pose_box, pose_box).item() == pytest.approx(0.0, abs=1e-12)
