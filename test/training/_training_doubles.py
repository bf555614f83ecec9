"""Small stand-ins used by the training tests only (never by the library).

- ``TinyPhi``: a 2-conv keypoint net whose output starts at the canonical pose's projection.
- ``splat_render``: a differentiable Gaussian-splat renderer of surface points (silhouette + flat
  colour), enough to carry gradients from pixels to ``(R, t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pose6d_ros.geometry.camera import pixels_to_normalized
from pose6d_ros.geometry.keypoints import box_keypoints, project_points

S = 32
HALF = 0.04  # cube half-size, metres


def intrinsics(batch: int) -> torch.Tensor:
    K = torch.tensor([[120.0, 0.0, S / 2 - 0.5], [0.0, 120.0, S / 2 - 0.5], [0.0, 0.0, 1.0]])
    return K.expand(batch, 3, 3).clone()


def cube_points(n_side: int = 5) -> torch.Tensor:
    g = torch.linspace(-HALF, HALF, n_side)
    pts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    # a slightly asymmetric object so PnP is well posed
    return pts * torch.tensor([1.0, 0.8, 0.6])


def keypoints_3d() -> torch.Tensor:
    return box_keypoints(cube_points())[None]  # (1, 9, 3)


def canonical_pose(batch: int):
    R = torch.eye(3).expand(batch, 3, 3).clone()
    t = torch.tensor([0.0, 0.0, 0.5]).expand(batch, 3).clone()
    return R, t


@dataclass
class SplatOutput:
    rgb: torch.Tensor
    silhouette: torch.Tensor


def splat_render(object_index, R, t, K, size, sigma: float = 1.0):
    pts = cube_points()
    uv = project_points(pts, R, t, K)  # (B, P, 2)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=uv.dtype), torch.arange(size, dtype=uv.dtype), indexing="ij")
    pix = torch.stack((xs, ys), -1).reshape(1, -1, 1, 2)  # (1, HW, 1, 2)
    d2 = ((pix - uv[:, None]) ** 2).sum(-1)  # (B, HW, P)
    density = torch.exp(-d2 / (2 * sigma**2)).sum(-1)
    sil = (1 - torch.exp(-density)).reshape(-1, 1, size, size)
    rgb = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1) * sil  # premultiplied, like render()
    return SplatOutput(rgb=rgb, silhouette=sil)


class TinyPhi(nn.Module):
    def __init__(self, k: int = 9) -> None:
        super().__init__()
        self.k = k
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(64, k * 2)
        R, t = canonical_pose(1)
        h0 = pixels_to_normalized(project_points(keypoints_3d()[0], R, t, intrinsics(1)), S)
        nn.init.normal_(self.head.weight, std=1e-2)
        with torch.no_grad():
            self.head.bias.copy_(h0.reshape(-1))

    def forward(self, images, object_index, return_features=False):
        return self.head(self.body(images)).view(-1, self.k, 2)


def occlusion(batch: int, size: int, device) -> torch.Tensor:
    m = torch.zeros(batch, 1, size, size, device=device)
    m[:, :, : size // 4, : size // 4] = 1.0
    return m


def real_batch(batch: int, seed: int = 0):
    """'Real' crops: the splat render at small random poses on a textured background."""
    g = torch.Generator().manual_seed(seed)
    R, t = canonical_pose(batch)
    t = t + 0.01 * torch.randn(batch, 3, generator=g) * torch.tensor([1.0, 1.0, 2.0])
    K = intrinsics(batch)
    obj = torch.zeros(batch, dtype=torch.long)
    out = splat_render(obj, R, t, K, S)
    bg = torch.rand(batch, 3, S, S, generator=g)
    img = out.silhouette * torch.tensor([0.8, 0.4, 0.3]).view(1, 3, 1, 1) + (1 - out.silhouette) * bg
    kp = pixels_to_normalized(project_points(keypoints_3d()[0], R, t, K), S)
    return {"image": img, "K": K, "object_index": obj}, kp
