"""Torch datasets of object crops over a BOP split, and a reproducible ``DataLoader`` factory.

Each item is one object instance (a GT instance or a detection) cut from its image as a square crop
(:mod:`pose6d_ros.data.crops`) with its crop intrinsics.  Box jitter is drawn from a generator seeded
by ``(seed, epoch, index)``, so an item is the same whichever worker loads it: batches depend on the
loader's seed and the epoch only, not on the number of workers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pose6d_ros.data import bop
from pose6d_ros.data.crops import (
    CropConfig,
    bop_bbox_to_box,
    coco_bbox_to_box,
    crop_images,
    jitter_boxes,
    square_windows,
)
from pose6d_ros.geometry.camera import crop_intrinsics, pixels_to_normalized
from pose6d_ros.geometry.keypoints import project_points

__all__ = ["LabelledCropDataset", "UnlabeledCropDataset", "make_loader", "seed_worker", "keypoint_table"]

KeypointSpec = Union[Mapping[int, Any], torch.Tensor, np.ndarray]
BOX_SOURCES_LABELLED = ("visib", "obj", "projected")
BOX_SOURCES_UNLABELED = ("visib", "obj", "detections")


def keypoint_table(keypoints: KeypointSpec, obj_ids: Optional[Sequence[int]] = None) -> Tuple[List[int], torch.Tensor]:
    """Normalise per-object 3D keypoints to ``(obj_ids, (O, Kp, 3) float64)``.

    Args:
        keypoints: ``{obj_id: (Kp, 3)}`` (metres, model frame), or an ``(O, Kp, 3)`` array whose
            rows follow ``obj_ids``.
        obj_ids: the class order (CIN index = position).  Required for an array; for a dict it
            defaults to the sorted keys and must be a subset of them.

    Returns:
        the class order and the stacked keypoints.
    """
    if isinstance(keypoints, Mapping):
        ids = sorted(int(k) for k in keypoints) if obj_ids is None else [int(o) for o in obj_ids]
        missing = [o for o in ids if o not in keypoints]
        if missing:
            raise ValueError(f"keypoints: no entry for object ids {missing}")
        table = torch.stack([torch.as_tensor(np.asarray(keypoints[o]), dtype=torch.float64) for o in ids])
    else:
        if obj_ids is None:
            raise ValueError("keypoints given as an array need obj_ids (the object id of each row)")
        ids = [int(o) for o in obj_ids]
        table = torch.as_tensor(np.asarray(keypoints), dtype=torch.float64)
        if table.shape[0] != len(ids):
            raise ValueError(f"keypoints: {table.shape[0]} rows but {len(ids)} obj_ids")
    if table.dim() != 3 or table.shape[-1] != 3:
        raise ValueError(f"keypoints: expected shape (O, Kp, 3), got {tuple(table.shape)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"obj_ids has duplicates: {ids}")
    return ids, table


def _item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _CropDatasetBase(Dataset):
    """Shared crop logic: boxes -> jittered square windows -> crops + K_crop."""

    def __init__(self, index: bop.BopDataset, crop: CropConfig, jitter: bool, seed: int) -> None:
        self.index = index
        self.crop = crop
        self.jitter = jitter
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the jitter draw (call before iterating an epoch; workers copy it at start)."""
        self.epoch = int(epoch)

    def _window(self, box: torch.Tensor, index: int) -> torch.Tensor:
        box = box.to(torch.float64).view(1, 4)
        if self.jitter:
            box = jitter_boxes(box, self.crop.jitter_shift, self.crop.jitter_scale,
                               generator=_item_generator(self.seed, self.epoch, index))
        return square_windows(box, self.crop.padding)[0]

    def _crop(self, scene_id: int, im_id: int, window: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.index.load_rgb(scene_id, im_id)).permute(2, 0, 1)[None].float().div_(255.0)
        crop = crop_images(image, window[None].float(), self.crop.size)[0]
        K = torch.from_numpy(self.index.camera(scene_id, im_id).K)
        K_crop = crop_intrinsics(K[None], window[None], self.crop.size)[0]
        return crop, K_crop

    def _gt_box(self, inst: bop.BopInstance, source: str) -> Optional[torch.Tensor]:
        info = self.index.gt_info(inst)
        if info is None:
            return None
        xywh = info.bbox_visib if source == "visib" else info.bbox_obj
        if xywh[2] < 0 or xywh[3] < 0:
            return None
        return bop_bbox_to_box(torch.tensor(xywh, dtype=torch.float64))


class LabelledCropDataset(_CropDatasetBase):
    """Crops of labelled GT instances with pose and normalised keypoint targets.

    Args:
        split: a BOP split folder or a :class:`~pose6d_ros.data.bop.BopDataset`.
        keypoints: per-object model-frame keypoints, ``{obj_id: (Kp, 3)}`` or ``(O, Kp, 3)`` with
            ``obj_ids`` (e.g. the registry's keypoints); only these objects are used.
        obj_ids: class order (``obj_index`` = position); see :func:`keypoint_table`.
        crop: crop size, padding and jitter ranges.
        box_source: ``"visib"`` (``bbox_visib`` of ``scene_gt_info.json``), ``"obj"`` (``bbox_obj``)
            or ``"projected"`` (box of the projected keypoints; no ``scene_gt_info.json`` needed).
            ``"visib"``/``"obj"`` fall back to ``"projected"`` where the box is missing or empty.
        jitter: perturb boxes (training).
        min_visib_fract: drop instances less visible than this (needs ``scene_gt_info.json``).
        seed: jitter seed.

    Items (dict): ``image (3, S, S)`` float in ``[0, 1]``, ``K (3, 3)`` crop intrinsics, ``R (3, 3)``,
    ``t (3,)`` metres, ``keypoints_2d (Kp, 2)`` normalised crop coordinates, ``keypoints_3d (Kp, 3)``,
    ``window (4,)``, ``obj_id``, ``obj_index``, ``scene_id``, ``im_id``, ``gt_idx``.
    """

    def __init__(
        self,
        split: Union[str, Path, bop.BopDataset],
        keypoints: KeypointSpec,
        *,
        obj_ids: Optional[Sequence[int]] = None,
        crop: CropConfig = CropConfig(),
        box_source: str = "visib",
        jitter: bool = True,
        min_visib_fract: float = 0.0,
        seed: int = 0,
    ) -> None:
        if box_source not in BOX_SOURCES_LABELLED:
            raise ValueError(f"box_source must be one of {BOX_SOURCES_LABELLED}, got '{box_source}'")
        ids, self.keypoints = keypoint_table(keypoints, obj_ids)
        index = split if isinstance(split, bop.BopDataset) else bop.BopDataset(
            split, obj_ids=ids, min_visib_fract=min_visib_fract)
        super().__init__(index, crop, jitter, seed)
        if not index.labelled:
            raise ValueError(f"{index.split_path}: no scene_gt.json, the split is unlabeled")
        self.obj_ids = ids
        self.obj_index = {o: i for i, o in enumerate(ids)}
        self.instances = [i for i in index.instances if i.obj_id in self.obj_index]
        self.box_source = box_source

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        inst = self.instances[i]
        gt = self.index.gt(inst)
        oi = self.obj_index[inst.obj_id]
        kp3 = self.keypoints[oi]
        R, t = torch.from_numpy(gt.R)[None], torch.from_numpy(gt.t)[None]
        box = None if self.box_source == "projected" else self._gt_box(inst, self.box_source)
        if box is None:
            K_full = torch.from_numpy(self.index.camera(inst.scene_id, inst.im_id).K)[None]
            uv = project_points(kp3, R, t, K_full)[0]
            box = torch.cat((uv.amin(0), uv.amax(0)))
        window = self._window(box, i)
        image, K_crop = self._crop(inst.scene_id, inst.im_id, window)
        uv_crop = project_points(kp3, R, t, K_crop[None])[0]
        return {
            "image": image,
            "K": K_crop.float(),
            "R": R[0].float(),
            "t": t[0].float(),
            "keypoints_2d": pixels_to_normalized(uv_crop, self.crop.size).float(),
            "keypoints_3d": kp3.float(),
            "window": window.float(),
            "obj_id": inst.obj_id,
            "obj_index": oi,
            "scene_id": inst.scene_id,
            "im_id": inst.im_id,
            "gt_idx": inst.gt_idx,
        }


class UnlabeledCropDataset(_CropDatasetBase):
    """Crops for self-supervision: no pose is given out.

    Args:
        split: a BOP split folder or a :class:`~pose6d_ros.data.bop.BopDataset`.
        obj_ids: objects to keep, in class order (``obj_index`` = position).
        crop: crop size, padding and jitter ranges.
        box_source: ``"visib"`` / ``"obj"`` (GT boxes of ``scene_gt_info.json``; the poses are not
            read out) or ``"detections"``.
        detections: BOP default-detections records, or the path of such a JSON file
            (``box_source="detections"``).
        score_threshold: drop detections scoring below this.
        jitter: perturb boxes.
        min_visib_fract: drop GT instances less visible than this.
        seed: jitter seed.

    Items (dict): ``image (3, S, S)``, ``K (3, 3)``, ``window (4,)``, ``obj_id``, ``obj_index``,
    ``scene_id``, ``im_id``.
    """

    def __init__(
        self,
        split: Union[str, Path, bop.BopDataset],
        obj_ids: Sequence[int],
        *,
        crop: CropConfig = CropConfig(),
        box_source: str = "visib",
        detections: Optional[Union[Sequence[bop.DetectionRecord], str, Path]] = None,
        score_threshold: float = 0.0,
        jitter: bool = True,
        min_visib_fract: float = 0.0,
        seed: int = 0,
    ) -> None:
        if box_source not in BOX_SOURCES_UNLABELED:
            raise ValueError(f"box_source must be one of {BOX_SOURCES_UNLABELED}, got '{box_source}'")
        self.obj_ids = [int(o) for o in obj_ids]
        self.obj_index = {o: i for i, o in enumerate(self.obj_ids)}
        index = split if isinstance(split, bop.BopDataset) else bop.BopDataset(
            split, obj_ids=self.obj_ids, min_visib_fract=min_visib_fract)
        super().__init__(index, crop, jitter, seed)
        # items: (scene_id, im_id, obj_id, box (4,) float64)
        self.items: List[Tuple[int, int, int, torch.Tensor]] = []
        if box_source == "detections":
            if detections is None:
                raise ValueError("box_source='detections' needs detections")
            dets = bop.load_detections(detections) if isinstance(detections, (str, Path)) else detections
            images = set(index.images)
            for d in dets:
                if d.obj_id in self.obj_index and d.score >= score_threshold and (d.scene_id, d.im_id) in images:
                    box = coco_bbox_to_box(torch.tensor(d.bbox, dtype=torch.float64))
                    self.items.append((d.scene_id, d.im_id, d.obj_id, box))
        else:
            for inst in index.instances:
                if inst.obj_id not in self.obj_index:
                    continue
                box = self._gt_box(inst, box_source)
                if box is None:
                    continue  # no visible box: nothing to crop
                self.items.append((inst.scene_id, inst.im_id, inst.obj_id, box))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        scene_id, im_id, obj_id, box = self.items[i]
        window = self._window(box, i)
        image, K_crop = self._crop(scene_id, im_id, window)
        return {
            "image": image,
            "K": K_crop.float(),
            "window": window.float(),
            "obj_id": obj_id,
            "obj_index": self.obj_index[obj_id],
            "scene_id": scene_id,
            "im_id": im_id,
        }


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed; one torch thread.

    The DataLoader derives each worker's torch seed from its ``generator``, so these are reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    # Not cv2.setNumThreads here: in a forked worker it joins the parent's inherited thread pool and
    # hangs.  For the same reason crops are resampled with torch, whose pool is fork-safe.


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose order and per-worker seeds follow ``seed``.

    Two loaders made with the same arguments yield identical batches, whatever ``workers`` is
    (item randomness of the crop datasets is keyed by index, not by worker).

    Args:
        dataset: any map-style dataset.
        batch_size: samples per batch.
        workers: worker processes (0: load in the main process).
        seed: seeds the shuffling generator and, through it, the workers.
        shuffle: shuffle every epoch.
        drop_last: drop the last incomplete batch.
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=g,
        drop_last=drop_last,
        pin_memory=False,
    )
