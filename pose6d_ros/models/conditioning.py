"""Object conditioning of the last conv features: CIN (Eq. 4) and the paper's baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pose6d_ros._checks import check_same_batch, check_shape


def _exporting() -> bool:
    """True while traced or exported: Python-side shape checks would freeze the batch size there."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def check_conditioning_inputs(features: torch.Tensor, object_index: torch.Tensor, channels: int) -> None:
    """Shape checks shared by the conditioning layers (skipped during export)."""
    if _exporting():
        return
    check_shape(features, ("B", channels, "*", "*"), "features")
    check_shape(object_index, ("B",), "object_index")
    check_same_batch(("features", features), ("object_index", object_index))


class ConditionalInstanceNorm(nn.Module):
    r"""Conditional instance normalisation, Eq. 4 of Sock et al. (2020).

    .. math:: \mathrm{cin}(F, c) = \gamma_c \frac{F - \mu(F)}{\sigma(F)} + \beta_c

    ``μ`` and ``σ`` are the per-sample, per-channel statistics over the spatial dimensions (instance
    norm, no running statistics), and ``(γ_c, β_c)`` come from a learned ``N × C × 2`` lookup table
    row selected by each sample's object index, so one batch may mix objects. ``N = 1`` is the
    single-object network.

    Args:
        num_objects: N, rows of the lookup table.
        channels: C, channels of the conditioned feature map.
        eps: added to the variance before the square root.

    Shape:
        - features: ``(B, C, H, W)``
        - object_index: ``(B,)`` long, values in ``[0, N)``
        - output: ``(B, C, H, W)``

    Example:
        >>> cin = ConditionalInstanceNorm(num_objects=3, channels=8)
        >>> cin(torch.rand(4, 8, 5, 5), torch.tensor([0, 2, 2, 1])).shape
        torch.Size([4, 8, 5, 5])
    """

    def __init__(self, num_objects: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_objects < 1 or channels < 1:
            raise ValueError(f"num_objects and channels must be >= 1, got {num_objects}, {channels}")
        self.num_objects = num_objects
        self.channels = channels
        self.eps = eps
        # [..., 0] is γ, [..., 1] is β; identity at init so an untrained table is a plain instance norm.
        table = torch.zeros(num_objects, channels, 2)
        table[..., 0] = 1.0
        self.affine = nn.Parameter(table)

    def forward(self, features: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
        check_conditioning_inputs(features, object_index, self.channels)
        normed = F.instance_norm(features, eps=self.eps)
        gamma_beta = self.affine[object_index]  # (B, C, 2): a Gather in ONNX
        gamma = gamma_beta[..., 0, None, None]
        beta = gamma_beta[..., 1, None, None]
        return gamma * normed + beta

    def extra_repr(self) -> str:
        return f"num_objects={self.num_objects}, channels={self.channels}, eps={self.eps}"


class OneHotConditioning(nn.Module):
    """The one-hot baseline: the object's one-hot vector appended to the features as constant maps.

    Shape:
        - features: ``(B, C, H, W)``
        - object_index: ``(B,)`` long
        - output: ``(B, C + N, H, W)``
    """

    def __init__(self, num_objects: int, channels: int) -> None:
        super().__init__()
        self.num_objects = num_objects
        self.channels = channels
        self.register_buffer("eye", torch.eye(num_objects), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.channels + self.num_objects

    def forward(self, features: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
        check_conditioning_inputs(features, object_index, self.channels)
        onehot = self.eye.to(features.dtype)[object_index]  # (B, N)
        maps = onehot[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
        return torch.cat([features, maps], dim=1)


class NoConditioning(nn.Module):
    """Identity: features pass unchanged (single-object nets without CIN, and the multi-output head)."""

    def __init__(self, num_objects: int, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, features: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
        return features
