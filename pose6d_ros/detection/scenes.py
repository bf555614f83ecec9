"""Synthetic detection scenes: several registered objects per frame, rendered with OUR rasterizer.

This is the detector's source domain. Each object is rendered alone by ``rendering.render`` in hard
mode (vertex colours, random Lambert light); the objects of a frame are composited per pixel by
depth (nearest wins), over random non-photographic backgrounds (``data.synthetic.random_backgrounds``),
then colour-jittered, noised and blurred (``data.augment.color_augment``). pyrender is never used
here: it plays the "real" camera (``data.simreal``).

Boxes are taken from the composited masks, so they are the *visible* boxes (BOP's ``bbox_visib``);
amodal boxes (``bbox_obj``, clipped to the image) come from each object's own silhouette.
The objects, poses and boxes of frame ``i`` depend only on ``(seed, i)`` (lighting and backgrounds
on the batch); a batch renders in one pass per light group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from pose6d_ros.data.augment import ColorAugmentConfig, color_augment
from pose6d_ros.data.simreal import LINEMOD_K, look_at_rotation, sample_view_dirs
from pose6d_ros.data.synthetic import random_backgrounds
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.rendering.mesh import pack_objects
from pose6d_ros.rendering.renderer import RenderSettings, render

__all__ = ["SceneConfig", "SceneBatch", "DetectionScenes", "mask_boxes", "scaled_intrinsics"]


def scaled_intrinsics(K: np.ndarray, scale: float) -> np.ndarray:
    """``K`` of the same camera with the image resized by ``scale`` (pixel centres at integers:
    ``u' = (u + 0.5) * scale - 0.5``)."""
    A = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])
    return A @ np.asarray(K, dtype=np.float64)


@dataclass
class SceneConfig:
    """Settings of the synthetic detection scenes.

    Attributes:
        image_size: ``(H, W)``. Default: LINEMOD's 640x480 halved, which is also the detector's
            input size (``DetectorSpec.min_size``), so training sees what inference sees.
        K: ``(3, 3)`` intrinsics; default LINEMOD's scaled to ``image_size``.
        objects_per_frame: inclusive range of objects per frame.
        object_px: range of each object's projected diameter, pixels.
        viewpoints: ``"upper"`` or ``"sphere"`` (``data.simreal.sample_view_dirs``).
        inplane_deg: max absolute in-plane rotation, degrees.
        center_margin: fraction of the frame kept clear at the borders for object centres.
        min_visible_px: objects with fewer visible pixels get no box (and are left as clutter).
        min_visib_fract: likewise for the visible fraction of the object's own silhouette.
        ambient, light_gain: Lambert lighting ranges (as ``data.synthetic.SyntheticConfig``).
        light_group: frames sharing one lighting draw (the renderer takes one light per call).
        augment: apply ``data.augment.color_augment``.
    """

    image_size: tuple[int, int] = (240, 320)
    K: np.ndarray | None = None
    objects_per_frame: tuple[int, int] = (1, 5)
    object_px: tuple[float, float] = (28.0, 100.0)
    viewpoints: str = "upper"
    inplane_deg: float = 45.0
    center_margin: float = 0.05
    min_visible_px: int = 40
    min_visib_fract: float = 0.1
    ambient: tuple[float, float] = (0.3, 0.7)
    light_gain: tuple[float, float] = (0.7, 1.3)
    light_group: int = 4
    augment: bool = True

    def intrinsics(self) -> np.ndarray:
        if self.K is not None:
            return np.asarray(self.K, dtype=np.float64)
        return scaled_intrinsics(LINEMOD_K, self.image_size[1] / 640.0)


@dataclass
class SceneBatch:
    """Rendered frames and their boxes.

    Attributes:
        images: ``(B, 3, H, W)`` in [0, 1].
        labels: ``(B, H, W)`` long: ``k + 1`` where object slot ``k`` is visible, 0 on background.
        obj_index: ``(B, M)`` long registry index per slot, ``-1`` for an empty slot.
        boxes_visib: ``(B, M, 4)`` visible boxes ``(x0, y0, x1, y1)`` in continuous pixel
            coordinates (edges: a pixel ``j`` spans ``[j - 0.5, j + 0.5]``); NaN when not visible.
        boxes_obj: ``(B, M, 4)`` boxes of each object's whole silhouette (clipped to the image).
        px_visible: ``(B, M)`` visible pixel counts; ``px_all``: ``(B, M)`` silhouette pixel counts.
        valid: ``(B, M)`` bool: slot holds an object that passes the visibility thresholds.
        R, t: ``(B, M, 3, 3)``, ``(B, M, 3)`` poses (zeros for empty slots).
        K: ``(3, 3)`` intrinsics.
    """

    images: torch.Tensor
    labels: torch.Tensor
    obj_index: torch.Tensor
    boxes_visib: torch.Tensor
    boxes_obj: torch.Tensor
    px_visible: torch.Tensor
    px_all: torch.Tensor
    valid: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    K: torch.Tensor

    def targets(self, offset: float = 0.0) -> List[dict]:
        """torchvision detection targets: per frame ``boxes (N, 4)`` (+ ``offset``) and ``labels (N,)``
        = registry index + 1 (0 is background), for the valid slots."""
        out = []
        for b in range(self.images.shape[0]):  # per frame: torchvision wants a list of variable-size targets
            v = self.valid[b]
            out.append({"boxes": self.boxes_visib[b][v] + offset, "labels": self.obj_index[b][v] + 1})
        return out


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes of boolean masks in continuous pixel coordinates.

    Args:
        masks: ``(..., H, W)`` bool.

    Returns:
        ``(..., 4)`` ``(x0, y0, x1, y1)``: pixel edges around the set pixels (``x0 = min col - 0.5``,
        ``x1 = max col + 0.5``); NaN for an empty mask.
    """
    H, W = masks.shape[-2:]
    rows = masks.any(-1)  # (..., H)
    cols = masks.any(-2)  # (..., W)
    y0 = rows.float().argmax(-1)
    y1 = H - 1 - rows.flip(-1).float().argmax(-1)
    x0 = cols.float().argmax(-1)
    x1 = W - 1 - cols.flip(-1).float().argmax(-1)
    box = torch.stack([x0 - 0.5, y0 - 0.5, x1 + 0.5, y1 + 0.5], -1).float()
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.full_like(box, float("nan")), box)


class DetectionScenes:
    """Synthetic multi-object frames of a registry's objects, rendered on demand.

    Args:
        registry: the objects; label ``k + 1`` is ``registry.index_of(id) == k``.
        cfg: :class:`SceneConfig`.
        seed: frame ``i``'s objects and poses depend only on ``(seed, i)``.
        device: where to render.

    Example:
        >>> scenes = DetectionScenes(ObjectRegistry.from_yaml("config/objects_lm_lite.yaml"))  # doctest: +SKIP
        >>> b = scenes.batch(range(8)); b.images.shape, b.boxes_visib.shape  # doctest: +SKIP
        (torch.Size([8, 3, 240, 320]), torch.Size([8, 5, 4]))
    """

    def __init__(self, registry: ObjectRegistry, cfg: SceneConfig | None = None, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.registry = registry
        self.cfg = cfg or SceneConfig()
        self.seed = int(seed)
        self.device = torch.device(device)
        lo, hi = self.cfg.objects_per_frame
        if not 1 <= lo <= hi:
            raise ValueError(f"SceneConfig.objects_per_frame: expected 1 <= lo <= hi, got {self.cfg.objects_per_frame}")
        self.meshes = pack_objects(list(registry), device=self.device)  # mesh index == registry.index_of(id)
        self.diameters = registry.diameters()
        self.K = self.cfg.intrinsics()

    @property
    def max_objects(self) -> int:
        return self.cfg.objects_per_frame[1]

    def sample_poses(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(B, M)`` registry indices (``-1`` empty), ``(B, M, 3, 3)`` R and ``(B, M, 3)`` t."""
        cfg, K = self.cfg, self.K
        H, W = cfg.image_size
        n, M = len(indices), self.max_objects
        idx = np.full((n, M), -1, dtype=np.int64)
        R = np.zeros((n, M, 3, 3))
        t = np.zeros((n, M, 3))
        K_inv = np.linalg.inv(K)
        for j, i in enumerate(indices):  # a few scalar draws per frame
            rng = np.random.default_rng([self.seed, int(i)])
            m = int(rng.integers(cfg.objects_per_frame[0], cfg.objects_per_frame[1] + 1))
            k = rng.choice(len(self.registry), size=m, replace=m > len(self.registry))
            px = rng.uniform(*cfg.object_px, size=m)
            Z = K[0, 0] * self.diameters[k] / px
            u = rng.uniform(cfg.center_margin * W, (1 - cfg.center_margin) * W, size=m) - 0.5
            v = rng.uniform(cfg.center_margin * H, (1 - cfg.center_margin) * H, size=m) - 0.5
            rays = np.stack([u, v, np.ones(m)], 1) @ K_inv.T
            idx[j, :m] = k
            t[j, :m] = rays * Z[:, None]
            R[j, :m] = look_at_rotation(sample_view_dirs(rng, m, cfg.viewpoints),
                                        np.deg2rad(rng.uniform(-cfg.inplane_deg, cfg.inplane_deg, m)))
        return idx, R, t

    def batch(self, indices: Sequence[int]) -> SceneBatch:
        """Render frames ``indices`` (see :class:`SceneBatch`)."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("DetectionScenes.batch: empty indices")
        cfg, dev = self.cfg, self.device
        H, W = cfg.image_size
        n, M = len(indices), self.max_objects
        idx_np, R_np, t_np = self.sample_poses(indices)
        idx = torch.as_tensor(idx_np, device=dev)
        R = torch.as_tensor(R_np, dtype=torch.float32, device=dev)
        t = torch.as_tensor(t_np, dtype=torch.float32, device=dev)
        Kt = torch.as_tensor(self.K, dtype=torch.float32, device=dev)
        rng = np.random.default_rng([self.seed, indices[0], n, 7])

        rgb = torch.zeros(n, M, 3, H, W, device=dev)
        depth = torch.full((n, M, H, W), float("inf"), device=dev)
        for s in range(0, n, cfg.light_group):  # the renderer takes one light per call
            f = torch.arange(s, min(s + cfg.light_group, n), device=dev)
            occupied = idx[f] >= 0  # (g, M)
            fi, si = torch.nonzero(occupied, as_tuple=True)
            fi = f[fi]
            ld = rng.normal(size=3)
            ld[2] = abs(ld[2]) + 0.5
            amb, gain = float(rng.uniform(*cfg.ambient)), float(rng.uniform(*cfg.light_gain))
            settings = RenderSettings(hard=True, light_direction=tuple(ld / np.linalg.norm(ld)),
                                      ambient=amb * gain, diffuse=(1 - amb) * gain)
            out = render(self.meshes, idx[fi, si], R[fi, si], t[fi, si], Kt.expand(len(fi), 3, 3), (H, W), settings)
            hit = out.silhouette[:, 0] > 0.5
            rgb[fi, si] = out.rgb.clamp(0, 1)
            depth[fi, si] = torch.where(hit, out.depth[:, 0], torch.full_like(out.depth[:, 0], float("inf")))

        near, front = depth.min(1)  # (n, H, W): nearest object wins the pixel
        covered = torch.isfinite(near)
        labels = torch.where(covered, front + 1, torch.zeros_like(front))
        own = torch.isfinite(depth)  # (n, M, H, W) each object's own silhouette
        visible = labels[:, None] == torch.arange(1, M + 1, device=dev)[None, :, None, None]
        fg = torch.gather(rgb, 1, front[:, None, None].expand(n, 1, 3, H, W))[:, 0]
        bg = random_backgrounds(n, max(H, W), rng, device=dev)[..., :H, :W]
        images = torch.where(covered[:, None], fg, bg)
        if cfg.augment:
            g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            images = color_augment(images.cpu(), ColorAugmentConfig(), generator=g).to(dev)

        px_visible = visible.sum((-1, -2))
        px_all = own.sum((-1, -2))
        valid = (idx >= 0) & (px_visible >= cfg.min_visible_px) & \
            (px_visible >= cfg.min_visib_fract * px_all.clamp(min=1))
        return SceneBatch(images=images, labels=labels, obj_index=idx, boxes_visib=mask_boxes(visible),
                          boxes_obj=mask_boxes(own), px_visible=px_visible, px_all=px_all, valid=valid,
                          R=R, t=t, K=Kt)
