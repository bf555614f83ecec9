"""The synthetic source domain: labelled crops rendered on the fly with OUR renderer.

Each sample is a full-frame pose drawn like the simulated real domain's (same camera, distances,
viewpoints and in-plane range), cropped the way real detections are cropped
(``data.crops.square_windows`` + ``jitter_boxes`` around the object's 2D box), and rendered straight
into the crop with ``K_crop`` by ``rendering.render`` in hard mode: the object's own vertex colours,
random Lambert lighting, random backgrounds (noise, smooth noise, colour blobs; never the
photographs of the real domain). Labels: ``R``, ``t``, ``K_crop`` and the keypoints in crop pixels
and in normalised crop coordinates (docs/conventions.md).

Sample ``i``'s object, pose, crop window and background depend only on ``(seed, i)``; its lighting
is drawn per group of ``light_group`` consecutive items of a batch (the renderer takes one light per
call). A whole batch is rendered in one call (:meth:`SyntheticCrops.batch`, also used by
``DataLoader`` through ``__getitems__``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pose6d_ros.data.crops import DEFAULT_CROP_PADDING, jitter_boxes, square_windows
from pose6d_ros.data.simreal import LINEMOD_K, look_at_rotation, sample_view_dirs
from pose6d_ros.geometry.camera import crop_intrinsics, pixels_to_normalized
from pose6d_ros.geometry.keypoints import project_points
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.rendering.mesh import pack_objects
from pose6d_ros.rendering.renderer import RenderSettings, render


@dataclass
class SyntheticConfig:
    """Settings of the source domain.

    Attributes:
        size: crop side ``S`` in pixels.
        K: ``(3, 3)`` full-frame camera the poses are drawn for (default: the real domain's).
        image_size: ``(H, W)`` of that camera's frame.
        object_px: range of the object's projected diameter in the full frame, pixels.
        viewpoints: ``"upper"`` or ``"sphere"``.
        inplane_deg: max absolute in-plane rotation, degrees.
        center_margin: fraction of the frame kept clear at the borders for the object centre.
        padding: crop window side over the 2D box's longer side (as for real crops).
        jitter_shift, jitter_scale: crop jitter (``data.crops.jitter_boxes``).
        ambient: range of the ambient weight (diffuse is ``1 - ambient``, times ``light_gain``).
        light_gain: range of the light's brightness factor.
        light_group: items sharing one lighting draw (the renderer takes one light per call).
        object_ids: restrict to these ids (default: all registered objects).
    """

    size: int = 64
    K: np.ndarray | None = None
    image_size: tuple[int, int] = (480, 640)
    object_px: tuple[float, float] = (70.0, 170.0)
    viewpoints: str = "upper"
    inplane_deg: float = 45.0
    center_margin: float = 0.2
    padding: float = DEFAULT_CROP_PADDING
    jitter_shift: float = 0.1
    jitter_scale: float = 0.15
    ambient: tuple[float, float] = (0.3, 0.7)
    light_gain: tuple[float, float] = (0.8, 1.2)
    light_group: int = 8
    object_ids: Sequence[int] | None = None


class SyntheticCrops(torch.utils.data.Dataset):
    """Labelled synthetic crops, rendered on demand.

    Args:
        registry: the objects.
        length: number of samples (an epoch).
        cfg: :class:`SyntheticConfig`.
        seed: sample ``i`` is a function of ``(seed, i)``.
        device: where to render.

    Each item is a dict:
        ``image`` ``(3, S, S)`` in [0, 1]; ``mask`` ``(1, S, S)``; ``R`` ``(3, 3)``; ``t`` ``(3,)`` metres;
        ``K_crop`` ``(3, 3)``; ``K`` ``(3, 3)`` full frame; ``window`` ``(4,)`` crop window in the frame;
        ``keypoints_px`` ``(9, 2)`` crop pixels; ``keypoints`` ``(9, 2)`` normalised crop coordinates;
        ``obj_id`` (long); ``obj_index`` (long, ``registry.index_of``).
        :meth:`batch` returns the same keys with a leading batch dimension.

    Example:
        >>> ds = SyntheticCrops(registry, length=1000)  # doctest: +SKIP
        >>> b = ds.batch(range(32)); b["image"].shape  # doctest: +SKIP
        torch.Size([32, 3, 64, 64])
    """

    def __init__(self, registry: ObjectRegistry, length: int, cfg: SyntheticConfig | None = None,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.registry = registry
        self.length = int(length)
        self.cfg = cfg or SyntheticConfig()
        self.seed = int(seed)
        self.device = torch.device(device)
        ids = list(self.cfg.object_ids) if self.cfg.object_ids is not None else registry.ids
        for i in ids:
            registry.get(int(i))  # KeyError naming the registry for unknown ids
        self.object_ids = [int(i) for i in ids]
        self.meshes = pack_objects(list(registry), device=self.device)  # mesh index == registry.index_of(id)
        self.model_keypoints = torch.as_tensor(registry.keypoints(), dtype=torch.float32, device=self.device)
        self.diameters = registry.diameters()
        self.K = np.asarray(self.cfg.K if self.cfg.K is not None else LINEMOD_K, dtype=np.float64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch([i]).items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        b = self.batch(indices)
        return [{k: v[j] for k, v in b.items()} for j in range(len(indices))]

    def sample_poses(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Draw objects, full-frame poses and crop windows for ``indices`` (no rendering)."""
        cfg, K = self.cfg, self.K
        H, W = cfg.image_size
        n = len(indices)
        obj_id = np.empty(n, dtype=np.int64)
        R = np.empty((n, 3, 3))
        t = np.empty((n, 3))
        for j, i in enumerate(indices):  # per-sample draws: a handful of scalars each
            if not 0 <= int(i) < self.length:
                raise IndexError(f"SyntheticCrops: index {i} out of range [0, {self.length})")
            rng = np.random.default_rng([self.seed, int(i)])
            oid = self.object_ids[int(rng.integers(len(self.object_ids)))]
            d = self.registry.get(oid).diameter
            Z = K[0, 0] * d / rng.uniform(*cfg.object_px)
            u = rng.uniform(cfg.center_margin * W, (1 - cfg.center_margin) * W) - 0.5
            v = rng.uniform(cfg.center_margin * H, (1 - cfg.center_margin) * H) - 0.5
            t[j] = Z * np.linalg.solve(K, np.array([u, v, 1.0]))
            R[j] = look_at_rotation(sample_view_dirs(rng, 1, cfg.viewpoints),
                                    np.deg2rad(rng.uniform(-cfg.inplane_deg, cfg.inplane_deg, 1)))[0]
            obj_id[j] = oid
        obj_index = torch.tensor([self.registry.index_of(int(o)) for o in obj_id], device=self.device)
        Rt = torch.as_tensor(R, dtype=torch.float32, device=self.device)
        tt = torch.as_tensor(t, dtype=torch.float32, device=self.device)
        Kt = torch.as_tensor(K, dtype=torch.float32, device=self.device).expand(n, 3, 3).contiguous()
        boxes = self._boxes(obj_index, Rt, tt, Kt)
        squares = square_windows(boxes.cpu(), padding=cfg.padding)
        # One generator per sample, so a sample's crop does not depend on the batch it is drawn in.
        windows = torch.cat([
            jitter_boxes(squares[j:j + 1], shift=cfg.jitter_shift, scale=cfg.jitter_scale,
                         generator=torch.Generator().manual_seed(self.seed * 1_000_003 + int(i)))
            for j, i in enumerate(indices)]).to(self.device)
        K_crop = crop_intrinsics(Kt, windows, cfg.size)
        return {"obj_id": torch.as_tensor(obj_id, device=self.device), "obj_index": obj_index, "R": Rt, "t": tt,
                "K": Kt, "window": windows, "K_crop": K_crop}

    def _boxes(self, obj_index: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` tight 2D boxes (edges) of the projected meshes in the full frame."""
        verts = self.meshes.vertices[obj_index]
        valid = torch.arange(verts.shape[1], device=verts.device)[None] < self.meshes.num_vertices[obj_index][:, None]
        uv = project_points(verts, R, t, K)
        big = torch.finfo(uv.dtype).max
        lo = torch.where(valid[..., None], uv, uv.new_full((), big)).amin(1)
        hi = torch.where(valid[..., None], uv, uv.new_full((), -big)).amax(1)
        return torch.cat([lo - 0.5, hi + 0.5], dim=1)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Render samples ``indices`` in one batch (see the class docstring for the keys)."""
        indices = [int(i) for i in indices]
        out = self.sample_poses(indices)
        cfg, S, n = self.cfg, self.cfg.size, len(indices)
        rng = np.random.default_rng([self.seed, indices[0] if indices else 0, n, 1])
        images, masks = [], []
        for s in range(0, n, cfg.light_group):  # the renderer takes one light per call
            sl = slice(s, s + cfg.light_group)
            ld = rng.normal(size=3)
            ld[2] = abs(ld[2]) + 0.5  # light travels away from the camera side, onto the object
            amb = float(rng.uniform(*cfg.ambient))
            gain = float(rng.uniform(*cfg.light_gain))
            settings = RenderSettings(hard=True, light_direction=tuple(ld / np.linalg.norm(ld)),
                                      ambient=amb * gain, diffuse=(1 - amb) * gain)
            r = render(self.meshes, out["obj_index"][sl], out["R"][sl], out["t"][sl], out["K_crop"][sl], (S, S),
                       settings)
            images.append(r.rgb.clamp(0, 1))
            masks.append(r.silhouette)
        img = torch.cat(images)
        mask = torch.cat(masks)
        bg = torch.cat([random_backgrounds(1, S, np.random.default_rng([self.seed, i, 2]), device=self.device)
                        for i in indices])
        image = mask * img + (1 - mask) * bg
        kp_px = project_points(self.model_keypoints[out["obj_index"]], out["R"], out["t"], out["K_crop"])
        out.update(image=image, mask=mask, keypoints_px=kp_px, keypoints=pixels_to_normalized(kp_px, S))
        return out


def random_backgrounds(n: int, size: int, rng: np.random.Generator,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """``(n, 3, size, size)`` backgrounds in [0, 1]: per item one of pixel noise, smooth noise at a
    random scale, or random colour blobs on a random colour. No photographs (those belong to the
    real domain)."""
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    kind = torch.randint(0, 3, (n,), generator=g)
    pixel = torch.rand(n, 3, size, size, generator=g)
    res = int(rng.integers(2, 17))
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, res, res, generator=g), size=(size, size),
                                             mode="bilinear", align_corners=False)
    k = 6
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    centres = torch.rand(n, k, 2, generator=g) * size
    radii = (0.05 + 0.3 * torch.rand(n, k, 1, 1, generator=g)) * size
    d2 = (xx[None, None] - centres[..., 0, None, None]) ** 2 + (yy[None, None] - centres[..., 1, None, None]) ** 2
    w = torch.exp(-d2 / (2 * radii ** 2))  # (n, k, S, S)
    colours = torch.rand(n, k, 3, generator=g)
    base = torch.rand(n, 3, 1, 1, generator=g)
    blobs = base * (1 - w.amax(1, keepdim=True)) + torch.einsum("nkhw,nkc->nchw", w, colours)
    blobs = blobs / torch.clamp(w.sum(1, keepdim=True) + (1 - w.amax(1, keepdim=True)), min=1.0)
    out = torch.where((kind == 0)[:, None, None, None], pixel,
                      torch.where((kind == 1)[:, None, None, None], smooth, blobs))
    return out.clamp(0, 1).to(device)
