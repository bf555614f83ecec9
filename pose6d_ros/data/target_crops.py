"""Target-domain crops: instances of a BOP split (GT boxes or detections) cut out around their boxes.

The one crop pipeline of training, evaluation and the benchmarks: a box becomes a square window
(:func:`pose6d_ros.data.crops.square_windows`), resampled to ``S x S`` by
:func:`pose6d_ros.data.crops.crop_images` with its crop intrinsics (``docs/conventions.md``), as the
runtime crops a detection.

- :class:`CropItem`: one instance (image, object, box, pose if known);
- :func:`items_from_split` (GT visible boxes, LINEMOD protocol), :func:`items_from_detections`
  (``train_detections.json``), :func:`first_per_object`;
- :class:`TargetCrops`: batches of crops of a list of items, optionally jittered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pose6d_ros.data.bop import BopDataset, load_detections
from pose6d_ros.data.crops import DEFAULT_CROP_PADDING, bop_bbox_to_box, crop_images, jitter_boxes, square_windows
from pose6d_ros.geometry.camera import crop_affine, crop_intrinsics, pixels_to_normalized
from pose6d_ros.geometry.keypoints import project_points
from pose6d_ros.registry import RunObjects

__all__ = ["CropItem", "items_from_split", "first_per_object", "items_from_detections", "TargetCrops"]


@dataclass(frozen=True)
class CropItem:
    """One object instance to crop: its image, object, box ``(x, y, w, h)`` and, if known, its pose."""

    scene_id: int
    im_id: int
    obj_id: int
    bbox: Tuple[float, float, float, float]
    R: Optional[np.ndarray] = None
    t: Optional[np.ndarray] = None


def items_from_split(split_path: str | Path, obj_ids: Sequence[int], targets_only: bool = True,
                     min_visib_fract: float = 0.0) -> List[CropItem]:
    """Labelled instances of a BOP split with their visible GT boxes (as a perfect detector gives).

    ``targets_only`` keeps the LINEMOD protocol: in scene ``k`` only object ``k`` is evaluated
    (the suites put one target object per scene; the others are clutter). ``min_visib_fract`` keeps
    only instances at least that visible (``visib_fract`` of ``scene_gt_info.json``; LM-O's protocol
    counts those >= 0.3 of several objects per image, with ``targets_only=False``).
    """
    ds = BopDataset(split_path, obj_ids=obj_ids, min_visib_fract=min_visib_fract)
    # the scenes that must be labelled: the targets' (LINEMOD protocol), else all
    ds.require_labels([int(o) for o in obj_ids] if targets_only else None, info=True)
    out = []
    for inst in ds.instances:
        if targets_only and inst.scene_id != inst.obj_id:
            continue
        info = ds.gt_info(inst)
        if info is None:
            raise FileNotFoundError(f"{split_path}: scene {inst.scene_id}: no scene_gt_info.json (GT boxes)")
        if info.bbox_visib[2] <= 0:
            continue
        gt = ds.gt(inst)
        out.append(CropItem(inst.scene_id, inst.im_id, inst.obj_id, tuple(float(v) for v in info.bbox_visib),
                            np.asarray(gt.R, np.float64), np.asarray(gt.t, np.float64).reshape(3)))
    return out


def first_per_object(items: Sequence[CropItem], limit: int) -> List[CropItem]:
    """The first ``limit`` items of each ``obj_id``, in their original order."""
    kept: Dict[int, int] = {}
    out = []
    for it in items:
        if kept.get(it.obj_id, 0) < limit:
            kept[it.obj_id] = kept.get(it.obj_id, 0) + 1
            out.append(it)
    return out


def items_from_detections(path: str | Path, obj_ids: Sequence[int]) -> List[CropItem]:
    """Unlabeled instances from a BOP detections JSON (``train_detections.json``)."""
    keep = set(int(o) for o in obj_ids)
    return [CropItem(d.scene_id, d.im_id, d.obj_id, tuple(float(v) for v in d.bbox))
            for d in load_detections(path) if d.obj_id in keep]


class TargetCrops:
    """Crops of target-domain images around boxes, optionally jittered (Sec. 4: "we randomly perturb
    center position and rescale the bounding box during training").

    Labels (``R``, ``t``, ``keypoints``) are returned when every item has them; the self-supervised
    trainer never reads them (only the diagnostic evaluation and the real-label upper bound do).

    Args:
        rgb_split: the BOP split folder holding ``rgb/`` and ``scene_camera.json``.
        items: what to crop.
        objects: the run's objects (model rows).
        crop_size: S.
        padding: window side over the box's longer side.
        jitter: ``(shift, scale)`` for ``data.crops.jitter_boxes``, or ``None``.
    """

    def __init__(self, rgb_split: str | Path, items: Sequence[CropItem], objects: RunObjects, crop_size: int,
                 padding: float = DEFAULT_CROP_PADDING, jitter: Optional[Tuple[float, float]] = None, cache_images: int = 512) -> None:
        self.ds = BopDataset(rgb_split)
        self.items = list(items)
        if not self.items:
            raise ValueError(f"{rgb_split}: no instances of objects {objects.ids}")
        self.row = {oid: i for i, oid in enumerate(objects.ids)}
        self.kp3 = objects.keypoints
        self.S, self.padding, self.jitter = int(crop_size), float(padding), jitter
        self._cache: "OrderedDict[Tuple[int, int], torch.Tensor]" = OrderedDict()
        self._cache_size = cache_images

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return all(it.R is not None for it in self.items)

    def _image(self, sid: int, iid: int) -> torch.Tensor:
        key = (sid, iid)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        img = torch.from_numpy(self.ds.load_rgb(sid, iid)).permute(2, 0, 1).contiguous()  # uint8
        self._cache[key] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def batch(self, indices: Sequence[int], jitter: Optional[bool] = None,
              with_labels: bool = True) -> Dict[str, torch.Tensor]:
        """``{"image" (B,3,S,S), "K" (B,3,3) crop intrinsics, "box" (B,4) the (unjittered) box in crop
        pixels, "object_index" (B,)}`` plus, when
        labelled and ``with_labels``, ``"R"``, ``"t"``, ``"keypoints"`` (normalised)."""
        items = [self.items[int(i)] for i in indices]
        boxes = bop_bbox_to_box(torch.tensor([it.bbox for it in items], dtype=torch.float32))
        K = torch.stack([torch.as_tensor(np.asarray(self.ds.camera(it.scene_id, it.im_id).K), dtype=torch.float32)
                         for it in items])
        windows = square_windows(boxes, self.padding)
        if (self.jitter is not None) if jitter is None else jitter:
            shift, scale = self.jitter or (0.1, 0.15)
            windows = jitter_boxes(windows, shift=shift, scale=scale)
        crops = [crop_images(self._image(it.scene_id, it.im_id).float() / 255.0, w[None], self.S)
                 for it, w in zip(items, windows)]
        K_crop = crop_intrinsics(K, windows, self.S)
        A = crop_affine(windows, self.S)  # the box seen in crop pixels (L_box's detection box)
        box_crop = (boxes.view(-1, 2, 2) @ A[:, :, :2].transpose(1, 2) + A[:, None, :, 2]).reshape(-1, 4)
        out = {"image": torch.cat(crops), "K": K_crop, "box": box_crop,
               "object_index": torch.tensor([self.row[it.obj_id] for it in items]),
               "K_full": K, "ids": torch.tensor([[it.scene_id, it.im_id, it.obj_id] for it in items]),
               "index": torch.as_tensor([int(i) for i in indices], dtype=torch.long)}
        if with_labels and all(it.R is not None for it in items):
            R = torch.as_tensor(np.stack([it.R for it in items]), dtype=torch.float32)
            t = torch.as_tensor(np.stack([it.t for it in items]), dtype=torch.float32)
            kp = project_points(self.kp3[out["object_index"]], R, t, K_crop)
            out.update(R=R, t=t, keypoints=pixels_to_normalized(kp, self.S))
        return out
