"""Target-domain BatchNorm statistics, against statistics computed directly from the data."""

import pytest
import torch

from pose6d_ros.training.bn_adapt import adapt_batchnorm


class _ConvBN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3))) + object_index[:, None].float()


def test_running_stats_become_the_target_data_statistics():
    torch.manual_seed(0)
    model = _ConvBN()
    model.bn.running_mean.fill_(5.0)  # the "source" statistics, far from the target's
    model.bn.running_var.fill_(9.0)
    data = torch.rand(48, 3, 8, 8) * 2.0 + 1.0
    batches = [(data[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 48, 16)]
    model.train()
    assert adapt_batchnorm(model, batches) == 48
    with torch.no_grad():
        act = model.conv(data)  # (N, C, H, W): the BN's input
    mean = act.mean((0, 2, 3))
    torch.testing.assert_close(model.bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    # momentum=None averages the per-batch unbiased variances (equal batches)
    per_batch = torch.stack([act[i:i + 16].transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for i in range(0, 48, 16)])
    torch.testing.assert_close(model.bn.running_var, per_batch.mean(0), rtol=1e-5, atol=1e-5)
    assert model.training and model.bn.momentum == 0.1  # state restored


def test_weights_untouched_and_empty_input_is_an_error():
    model = _ConvBN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    adapt_batchnorm(model, [(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))])
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert not model.training
    stats = model.bn.running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        adapt_batchnorm(model, [])
    torch.testing.assert_close(model.bn.running_mean, stats)  # an error leaves the statistics as they were
