"""Distillation losses (Eq. 5, 6, 7) on hand-computed values, the hint adapters against torch's 1x1
convolution, and the model card's parameter and MAC counts against architecture arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pose6d_ros.models import PoseNet, count_macs, count_parameters
from pose6d_ros.training.distill_losses import HintAdapters, hint_loss, kd_star, kd_upper_bounded, masked_mean


def _kp(*rows):
    """``(B, 2, 2)`` keypoints from rows of 4 numbers (two keypoints of x, y)."""
    return torch.tensor(rows, dtype=torch.float64).view(-1, 2, 2)


# Sample 0: student better (errors 0.01 < 0.09). Sample 1: student worse (0.10 vs 0.01).
# Sample 2: a tie (0.0625 both, exact in binary) takes the "otherwise" branch (the condition is a strict <).
H_GT = _kp([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0])
H_S = _kp([0.1, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.1], [0.5, 0.75, 0.0, 0.0])
H_T = _kp([0.3, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.5, 0.25, 0.0, 0.0])
# ‖h_s − h_gt‖²: 0.01, 0.09 + 0.01, 0.0625; ‖h_t − h_gt‖²: 0.09, 0.01, 0.0625;
# ‖h_s − h_t‖²: 0.04, 0.04 + 0.01, 0.25
EQ5 = torch.tensor([0.01, 0.10 + 0.05, 0.0625 + 0.25], dtype=torch.float64)


def test_eq5_student_better_uses_the_label_only_and_worse_adds_the_teacher_term():
    h_s = H_S.clone().requires_grad_(True)
    h_t = H_T.clone().requires_grad_(True)
    loss = kd_upper_bounded(h_s, h_t, H_GT)
    torch.testing.assert_close(loss, EQ5, rtol=0, atol=1e-12)
    loss.sum().backward()
    # d/dh_s: 2 (h_s − h_gt) where the student is better, 2 (h_s − h_gt) + 2 (h_s − h_t) otherwise
    grad = 2 * (H_S - H_GT)
    grad[1:] += 2 * (H_S - H_T)[1:]
    torch.testing.assert_close(h_s.grad, grad, rtol=0, atol=1e-12)
    assert h_t.grad is None  # the teacher is a target


def test_eq7_on_a_mixed_batch_of_synthetic_and_real_samples():
    # samples 0-2 synthetic (labelled) as above; 3-4 real, unlabelled: their labels are NaN and unread
    h_s = torch.cat([H_S, _kp([0.2, -0.1, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0])]).requires_grad_(True)
    h_t = torch.cat([H_T, _kp([0.0, 0.1, 0.1, 0.3], [0.0, 0.0, 0.0, 0.0])])
    h_gt = torch.cat([H_GT, torch.full((2, 2, 2), float("nan"), dtype=torch.float64)])
    labelled = torch.tensor([True, True, True, False, False])
    loss = kd_star(h_s, h_t, h_gt, labelled)
    # real: ‖h_s − h_t‖² = 0.2² + 0.2² + 0.1² + 0 = 0.09, and 0 for identical outputs
    expected = torch.cat([EQ5, torch.tensor([0.09, 0.0], dtype=torch.float64)])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    masked_mean(loss).backward()
    assert torch.isfinite(h_s.grad).all()  # the NaN labels of real samples never reach a gradient
    grad_real = 2 * (h_s[3] - h_t[3]).detach() / 5
    torch.testing.assert_close(h_s.grad[3], grad_real, rtol=0, atol=1e-12)
    torch.testing.assert_close(masked_mean(loss), expected.mean())
    torch.testing.assert_close(masked_mean(loss, labelled), EQ5.mean())


def test_masked_mean_with_nothing_selected_is_a_zero():
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    out = masked_mean(v, torch.tensor([False, False]))
    assert float(out.detach()) == 0.0
    out.backward()
    assert v.grad.abs().sum() == 0


def test_hint_loss_is_zero_when_the_adapted_teacher_feature_equals_the_students():
    torch.manual_seed(0)
    adapters = HintAdapters(num_teachers=3, teacher_channels=6, student_channels=4)
    f_t, idx = torch.randn(5, 6, 3, 2), torch.tensor([2, 0, 1, 2, 0])
    adapted = adapters(f_t, idx)
    f_s = adapted.detach().clone().requires_grad_(True)
    loss = hint_loss(adapted, f_s)
    assert loss.shape == (5,) and bool((loss == 0).all())
    loss.sum().backward()
    assert float(f_s.grad.abs().max()) == 0.0
    # a uniform offset of 0.1 costs 0.01 per value: the loss is the mean over C·H·W
    torch.testing.assert_close(hint_loss(adapted.detach(), adapted.detach() + 0.1), torch.full((5,), 0.01))
    with pytest.raises(ValueError, match="differ in shape"):
        hint_loss(adapted, f_s[:, :3])


def test_each_sample_goes_through_its_own_teachers_1x1_conv():
    torch.manual_seed(1)
    adapters = HintAdapters(num_teachers=3, teacher_channels=6, student_channels=4)
    f_t, idx = torch.randn(5, 6, 3, 2), torch.tensor([2, 0, 1, 2, 0])
    out = adapters(f_t, idx)
    for i in range(5):  # the reference: torch's convolution with teacher idx[i]'s kernel
        w = adapters.weight[idx[i]][:, :, None, None]
        ref = F.conv2d(f_t[i:i + 1], w, adapters.bias[idx[i]])
        torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-6)
    # square adapters start as the identity
    square = HintAdapters(2, 5, 5)
    x = torch.randn(2, 5, 2, 2)
    torch.testing.assert_close(square(x, torch.tensor([1, 0])), x)


class _ThreeLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(64, 5)

    def forward(self, x, object_index):
        return self.fc(self.depthwise(self.conv(x)).flatten(1))


def test_macs_of_conv_depthwise_and_linear_layers():
    # 8x8 crop: conv 4·8·8 outputs × 3·3·3 = 6,912; depthwise 4·4·4 × 1·3·3 = 576; linear 5 × 64 = 320
    net = _ThreeLayers().train()
    assert count_macs(net, 8) == 6912 + 576 + 320
    assert net.training  # left as it was
    assert count_parameters(net) == (3 * 9 * 4 + 4) + (9 * 4 + 4) + (64 * 5 + 5)


def test_posenet_resnet18_parameters_and_macs_from_the_architecture():
    net = PoseNet(backbone="resnet18", num_objects=3, crop_size=64)  # stride 16: a 4x4 map of 512
    trunk = 11_689_512 - (512 * 1000 + 1000)  # torchvision's ResNet-18 without its classifier
    head = (512 * 128 + 128) + (128 * 16 * 256 + 256) + (256 * 18 + 18)
    assert count_parameters(net) == trunk + head + 3 * 512 * 2  # + the CIN table
    # conv1 7x7/2 to 32x32x64, layer1 four 3x3 convs at 32x32x64, then per stage at side s and
    # width c: a 3x3/2 conv from c/2, three 3x3 convs at c, a 1x1/2 downsample from c/2
    macs = 32 * 32 * 64 * 3 * 49 + 4 * 32 * 32 * 64 * 64 * 9
    for side, c in ((16, 128), (8, 256), (4, 512)):
        out = side * side * c
        macs += out * (c // 2) * 9 + 3 * out * c * 9 + out * (c // 2)
    macs += 16 * 128 * 512 + 256 * 2048 + 18 * 256  # head: 1x1 conv, two linear layers
    assert count_macs(net, 64) == macs
