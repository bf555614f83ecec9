"""Synthetic detection scenes: several registered objects per frame, rendered with OUR rasterizer.

This is the detector's source domain. Each object is rendered alone by ``rendering.render`` in hard
mode (vertex colours, random Lambert light); the objects of a frame are composited per pixel by
depth (nearest wins). pyrender is never used here: it plays the "real" camera (``data.simreal``).

What makes the frames realistic enough to carry over to camera images:

- **Photo backgrounds.** Most frames (``photo_prob``) lie on a random window of a photograph
  (``data.simreal.load_photos`` / ``crop_photo``: textured, natural statistics, edges that are no
  object); the rest on non-photographic noise (``data.synthetic.random_backgrounds``), so the
  detector cannot key on "photo = background".
- **Clutter and occlusion.** 1-5 objects per frame at random depths occlude each other; random
  distractor shapes (ellipses and quadrilaterals textured with photo windows or flat colour) lie
  behind the objects or, with ``distractor_front``, in front of them and hide parts (non-object
  occluders, as on a real table). Boxes are the *visible* parts either way.
- **Light.** A random Lambert light per group of frames, random ambient and gain.
- **The camera.** Each frame goes through ``data.simreal.degrade``, the camera model of the
  simulated real domain, with parameters drawn by ``data.simreal.sample_frames`` from an
  ``APPEARANCE`` preset (default ``"hard"``): motion blur, exposure and clipped highlights, white
  balance, saturation, gamma, vignetting, optical blur, a lower effective resolution, sensor noise,
  Bayer demosaicing and JPEG.

The photos are the ones the simulated real test split is built on (other windows of them): the
real-image benchmark (LM-O) is the check that this does not flatter the detector.

Boxes are taken from the composited masks, so they are the *visible* boxes (BOP's ``bbox_visib``);
amodal boxes (``bbox_obj``, clipped to the image) come from each object's own silhouette.
Frame ``i`` depends only on ``(seed, i)`` (objects, poses, light, background, distractors, camera),
whatever batch it is rendered in, except the optional batch-level ``color_augment`` (``augment``);
a batch renders in one pass per light group (frames ``i`` with the same ``i // light_group``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from pose6d_ros.data.augment import ColorAugmentConfig, color_augment
from pose6d_ros.data.simreal import (APPEARANCE, LINEMOD_K, RealDomainConfig, crop_photo, degrade, load_photos,
                                     look_at_rotation, sample_frames, sample_view_dirs)
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
        light_group: frames ``i`` with the same ``i // light_group`` share one lighting draw (the
            renderer takes one light per call).
        photo_prob: fraction of frames on a photo background (the rest on random noise).
        distractors: inclusive range of distractor shapes per frame.
        distractor_px: range of a distractor's size (pixels of its longer axis).
        distractor_front: chance that a distractor lies in front of the objects (occluding them).
        appearance: ``data.simreal.APPEARANCE`` preset of the camera effects (``degrade``) applied
            to every frame; ``None``: none.
        augment: apply ``data.augment.color_augment`` to the batch (after the camera effects).
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
    photo_prob: float = 0.7
    distractors: tuple[int, int] = (0, 3)
    distractor_px: tuple[float, float] = (20.0, 90.0)
    distractor_front: float = 0.3
    appearance: str | None = "hard"
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
        occluders: ``(B, H, W)`` bool: pixels of distractors in front of the objects (they hide
            whatever object is there; ``labels`` is 0 on them).
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
    occluders: torch.Tensor

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
        if self.cfg.appearance is not None and self.cfg.appearance not in APPEARANCE:
            raise ValueError(f"SceneConfig.appearance must be one of {sorted(APPEARANCE)} or None, "
                             f"got {self.cfg.appearance!r}")
        lo, hi = self.cfg.distractors
        if not 0 <= lo <= hi:
            raise ValueError(f"SceneConfig.distractors: expected 0 <= lo <= hi, got {self.cfg.distractors}")
        self.meshes = pack_objects(list(registry), device=self.device)  # mesh index == registry.index_of(id)
        self.diameters = registry.diameters()
        self.K = self.cfg.intrinsics()
        H, W = self.cfg.image_size
        # the simulated real domain's sampler draws each frame's photo window and camera effects
        self.camera = RealDomainConfig(width=W, height=H, **APPEARANCE[self.cfg.appearance or "standard"])
        self._photos: list[np.ndarray] | None = None

    @property
    def photos(self) -> list[np.ndarray]:
        """``data.simreal.load_photos``, loaded on first use."""
        if self._photos is None:
            H, W = self.cfg.image_size
            self._photos = load_photos(W, H)
        return self._photos

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

    def _frame_layers(self, i: int, cam) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i``'s background ``(H, W, 3)``, distractor colours ``(H, W, 3)`` (float32 in [0, 1])
        and the distractors' masks behind and in front of the objects ``(H, W)`` bool.

        ``cam`` is the frame's ``data.simreal.FrameSpec`` (its photo window is the background)."""
        import cv2

        cfg = self.cfg
        H, W = cfg.image_size
        rng = np.random.default_rng([self.seed, int(i), 11])
        if rng.random() < cfg.photo_prob:
            bg = crop_photo(self.photos[cam.photo], cam.photo_box, W, H)
        else:
            bg = random_backgrounds(1, max(H, W), rng)[0, :, :H, :W].permute(1, 2, 0).numpy()
        shapes = np.zeros((H, W, 3), np.float32)
        behind = np.zeros((H, W), bool)
        before = np.zeros((H, W), bool)
        for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):  # a few shapes
            size = rng.uniform(*cfg.distractor_px)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            mask = np.zeros((H, W), np.uint8)
            if rng.random() < 0.5:
                axes = (max(1, int(size / 2)), max(1, int(size / 2 * rng.uniform(0.3, 1.0))))
                cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            else:
                ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
                rad = size / 2 * rng.uniform(0.5, 1.0, 4)
                pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)
                cv2.fillPoly(mask, [pts], 1)
            m = mask.astype(bool)
            if rng.random() < 0.6:  # a window of a photo, else a flat colour
                tex = crop_photo(self.photos[int(rng.integers(len(self.photos)))],
                                 (float(rng.random()), float(rng.random()), float(rng.uniform(0.1, 0.5)), False), W, H)
                shapes[m] = tex[m]
            else:
                shapes[m] = rng.random(3)
            front = rng.random() < cfg.distractor_front
            (before if front else behind)[m] = True
            (behind if front else before)[m] = False
        return bg.astype(np.float32), shapes, behind, before

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
        rgb = torch.zeros(n, M, 3, H, W, device=dev)
        depth = torch.full((n, M, H, W), float("inf"), device=dev)
        groups = np.asarray(indices) // cfg.light_group
        for key in dict.fromkeys(groups.tolist()):  # the renderer takes one light per call
            f = torch.as_tensor(np.nonzero(groups == key)[0], device=dev)
            lrng = np.random.default_rng([self.seed, int(key), 7])
            fi, si = torch.nonzero(idx[f] >= 0, as_tuple=True)
            fi = f[fi]
            ld = lrng.normal(size=3)
            ld[2] = abs(ld[2]) + 0.5
            amb, gain = float(lrng.uniform(*cfg.ambient)), float(lrng.uniform(*cfg.light_gain))
            settings = RenderSettings(hard=True, light_direction=tuple(ld / np.linalg.norm(ld)),
                                      ambient=amb * gain, diffuse=(1 - amb) * gain)
            out = render(self.meshes, idx[fi, si], R[fi, si], t[fi, si], Kt.expand(len(fi), 3, 3), (H, W), settings)
            hit = out.silhouette[:, 0] > 0.5
            rgb[fi, si] = out.rgb.clamp(0, 1)
            depth[fi, si] = torch.where(hit, out.depth[:, 0], torch.full_like(out.depth[:, 0], float("inf")))

        near, front = depth.min(1)  # (n, H, W): nearest object wins the pixel
        covered = torch.isfinite(near)
        own = torch.isfinite(depth)  # (n, M, H, W) each object's own silhouette
        fg = torch.gather(rgb, 1, front[:, None, None].expand(n, 1, 3, H, W))[:, 0]
        cams = sample_frames(self.registry, self.registry.ids[0], indices, self.camera, self.seed, clutter=False)
        # per frame (photo windows and shapes are OpenCV calls): background, distractors, their masks
        bg, shapes, behind, before = (torch.from_numpy(np.stack(x)).to(dev) for x in
                                      zip(*(self._frame_layers(i, cam) for i, cam in zip(indices, cams))))
        bg, shapes = bg.permute(0, 3, 1, 2), shapes.permute(0, 3, 1, 2)
        images = torch.where(covered[:, None], fg, torch.where(behind[:, None], shapes, bg))
        images = torch.where(before[:, None], shapes, images)
        labels = torch.where(covered & ~before, front + 1, torch.zeros_like(front))
        visible = labels[:, None] == torch.arange(1, M + 1, device=dev)[None, :, None, None]
        if cfg.appearance is not None:  # the camera, per frame (OpenCV on NumPy images)
            frames = images.permute(0, 2, 3, 1).cpu().numpy()
            images = torch.from_numpy(np.stack([degrade(fr, cam, self.camera) for fr, cam in zip(frames, cams)]))
            images = (images.permute(0, 3, 1, 2).float() / 255.0).to(dev)
        if cfg.augment:
            g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, indices[0], n, 7]).integers(2 ** 62)))
            images = color_augment(images.cpu(), ColorAugmentConfig(), generator=g).to(dev)

        px_visible = visible.sum((-1, -2))
        px_all = own.sum((-1, -2))
        valid = (idx >= 0) & (px_visible >= cfg.min_visible_px) & \
            (px_visible >= cfg.min_visib_fract * px_all.clamp(min=1))
        return SceneBatch(images=images, labels=labels, obj_index=idx, boxes_visib=mask_boxes(visible),
                          boxes_obj=mask_boxes(own), px_visible=px_visible, px_all=px_all, valid=valid,
                          R=R, t=t, K=Kt, occluders=before)
