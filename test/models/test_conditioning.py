"""CIN (Eq. 4) and the one-hot conditioning against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pose6d_ros.models import ConditionalInstanceNorm, OneHotConditioning


def _hand_instance_norm(values: list[float], eps: float) -> list[float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)  # biased, as instance norm
    return [(v - mean) / math.sqrt(var + eps) for v in values]


class TestConditionalInstanceNorm:
    def test_matches_hand_computed(self, device, dtype):
        eps = 1e-5
        # B=2, C=2, 2x2 maps with distinct statistics per sample and channel.
        feats = torch.tensor(
            [[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]],
             [[[-1.0, 1.0], [-1.0, 1.0]], [[10.0, 20.0], [30.0, 60.0]]]], dtype=dtype, device=device)
        cin = ConditionalInstanceNorm(num_objects=3, channels=2, eps=eps).to(device, dtype)
        gamma = [[2.0, -1.0], [0.5, 3.0], [1.5, 0.25]]
        beta = [[0.1, 0.2], [-0.3, 0.4], [5.0, -5.0]]
        with torch.no_grad():
            cin.affine[..., 0] = torch.tensor(gamma, dtype=dtype)
            cin.affine[..., 1] = torch.tensor(beta, dtype=dtype)
        classes = [2, 0]
        out = cin(feats, torch.tensor(classes, device=device))
        expected = torch.empty_like(feats)
        for b, c in enumerate(classes):
            for ch in range(2):
                vals = feats[b, ch].flatten().tolist()
                normed = _hand_instance_norm(vals, eps)
                expected[b, ch] = torch.tensor([gamma[c][ch] * v + beta[c][ch] for v in normed],
                                               dtype=dtype).view(2, 2)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol)

    def test_identity_table_is_plain_instance_norm(self):
        feats = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
        out = ConditionalInstanceNorm(1, 1, eps=0.0)(feats, torch.tensor([0]))
        s = math.sqrt(5.0)  # values 1,3,5,7: mean 4, biased var 5
        torch.testing.assert_close(out, torch.tensor([[[[-3 / s, -1 / s], [1 / s, 3 / s]]]]))

    def test_mixed_batch_equals_per_class(self):
        cin = ConditionalInstanceNorm(num_objects=4, channels=8)
        with torch.no_grad():
            cin.affine.normal_()
        feats = torch.randn(6, 8, 3, 3)
        idx = torch.tensor([3, 0, 1, 3, 2, 0])
        together = cin(feats, idx)
        alone = torch.cat([cin(feats[i:i + 1], idx[i:i + 1]) for i in range(6)])
        torch.testing.assert_close(together, alone)

    def test_gradcheck(self):
        cin = ConditionalInstanceNorm(num_objects=2, channels=3).double()
        with torch.no_grad():
            cin.affine.normal_()
        feats = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
        idx = torch.tensor([1, 0])
        affine = cin.affine.detach().clone().requires_grad_()
        fn = lambda f, a: torch.func.functional_call(cin, {"affine": a}, (f, idx))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (feats, affine))

    def test_gradient_reaches_only_selected_rows(self):
        cin = ConditionalInstanceNorm(num_objects=3, channels=2)
        cin(torch.randn(2, 2, 2, 2), torch.tensor([0, 2])).sum().backward()
        assert cin.affine.grad[1].abs().sum() == 0
        assert cin.affine.grad[0].abs().sum() > 0 and cin.affine.grad[2].abs().sum() > 0

    def test_exceptions(self):
        cin = ConditionalInstanceNorm(2, 4)
        with pytest.raises(ValueError, match="features"):
            cin(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="object_index"):
            cin(torch.zeros(2, 4, 2, 2), torch.tensor([[0, 1]]))
        with pytest.raises(ValueError, match="batch sizes differ"):
            cin(torch.zeros(2, 4, 2, 2), torch.tensor([0, 1, 1]))
        with pytest.raises(ValueError):
            ConditionalInstanceNorm(0, 4)


class TestOneHotConditioning:
    def test_appends_one_hot_maps(self):
        feats = torch.randn(3, 2, 2, 2)
        out = OneHotConditioning(num_objects=4, channels=2)(feats, torch.tensor([1, 3, 0]))
        assert out.shape == (3, 6, 2, 2)
        torch.testing.assert_close(out[:, :2], feats)
        expected = torch.zeros(3, 4, 2, 2)
        expected[0, 1] = expected[1, 3] = expected[2, 0] = 1.0
        torch.testing.assert_close(out[:, 2:], expected)
