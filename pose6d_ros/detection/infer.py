"""Running the detector: ``Detector.detect(rgb)`` and box recall on a BOP split.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates (docs/conventions.md: pixel ``j``
spans ``[j - 0.5, j + 0.5]``), the convention of ``runtime.detection.Detection``. A BOP box
``(x, y, w, h)`` (integer pixels) is ``(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from pose6d_ros._checks import check_shape
from pose6d_ros.data.bop import BopDataset
from pose6d_ros.detection.model import TV_OFFSET, DetectorSpec, load_detector
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime.detection import Detection

__all__ = ["Detector", "RecallReport", "evaluate_recall", "bop_box_to_edges", "box_iou"]


class Detector:
    """A trained Faster R-CNN with its class table.

    Args:
        model: torchvision Faster R-CNN (eval mode).
        spec: its :class:`DetectorSpec` (class ``k + 1`` is ``spec.object_ids[k]``).
        device: where it runs.
        min_score: detections scoring below this are dropped.
    """

    def __init__(self, model: torch.nn.Module, spec: DetectorSpec, device: str | torch.device = "cpu",
                 min_score: float = 0.3) -> None:
        self.model = model.to(device).eval()
        self.spec = spec
        self.device = torch.device(device)
        self.min_score = float(min_score)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", min_score: float = 0.3,
                  expect_names: Optional[Sequence[str]] = None) -> "Detector":
        """Load a ``train_detector`` checkpoint (``DetectorCheckpointError`` naming the file if it is
        missing, unreadable, or has classes outside ``expect_names``)."""
        model, spec, _ = load_detector(path, device, expect_names=expect_names)
        return cls(model, spec, device, min_score)

    @property
    def names(self) -> tuple:
        return tuple(self.spec.object_names)

    @torch.no_grad()
    def detect_batch(self, images: torch.Tensor) -> List[List[Detection]]:
        """Detect in a batch of images.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1].

        Returns:
            per image, detections sorted by decreasing score (at most 100, score >= ``min_score``):
            ``class_id`` is the object's registry name, ``detection_id`` ``"<name>_<k>"`` with ``k`` the
            rank in the image.
        """
        check_shape(images, ("B", 3, "H", "W"), "images")
        outs = self.model(list(images.to(self.device, torch.float32)))
        result = []
        for o in outs:
            keep = o["scores"] >= self.min_score
            boxes = (o["boxes"][keep] - TV_OFFSET).cpu().tolist()
            labels = o["labels"][keep].cpu().tolist()
            scores = o["scores"][keep].cpu().tolist()
            names = [self.spec.object_names[lab - 1] for lab in labels]
            result.append([Detection(class_id=name, box=tuple(b), score=float(s), detection_id=f"{name}_{k}")
                           for k, (name, b, s) in enumerate(zip(names, boxes, scores))])
        return result

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        """Detect in one ``(H, W, 3)`` uint8 RGB image."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
            raise TypeError(f"rgb: expected a uint8 numpy array, got {type(rgb).__name__} "
                            f"{getattr(rgb, 'dtype', '')}")
        x = torch.from_numpy(np.ascontiguousarray(rgb))
        check_shape(x, ("H", "W", 3), "rgb")
        return self.detect_batch(x.permute(2, 0, 1)[None].float() / 255.0)[0]


def bop_box_to_edges(xywh: Sequence[float]) -> tuple:
    """BOP ``(x, y, w, h)`` integer-pixel box -> ``(x0, y0, x1, y1)`` pixel edges."""
    x, y, w, h = (float(v) for v in xywh)
    return (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``(x0, y0, x1, y1)``."""
    check_shape(a, ("N", 4), "a")
    check_shape(b, ("M", 4), "b")
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-12)


@dataclass
class RecallReport:
    """Box recall of a detector on a BOP split.

    ``recall[(subset, gt, rule, thr)]``: fraction of GT instances found; ``subset`` ``"all"`` (every
    counted instance, clutter included) or ``"target"`` (LINEMOD's protocol: only the object whose id
    is the scene id), ``gt`` in ``{"visib", "obj"}``
    (GT ``bbox_visib`` / ``bbox_obj``), ``rule`` ``"any"`` (some detection of the object's class with
    score >= ``min_score`` has IoU >= ``thr``) or ``"top1"`` (the class's highest-scoring detection
    in the image does: what a pose pipeline taking one box per object sees) or ``"agnostic"`` (a
    detection of any class with score >= ``min_score`` has IoU >= ``thr``: localisation alone).
    """

    split: str
    n_images: int
    n_instances: int
    n_targets: int
    min_score: float
    min_visib_fract: float
    recall: Dict[tuple, float] = field(default_factory=dict)
    mean_time_s: float = float("nan")
    device: str = "cpu"

    def summary(self) -> str:
        lines = [f"{self.split}: {self.n_images} images, {self.n_instances} GT instances with visib_fract >= "
                 f"{self.min_visib_fract} ({self.n_targets} targets); score >= {self.min_score}; "
                 f"mean inference {self.mean_time_s * 1000:.0f} ms/image on {self.device}"]
        for subset in ("target", "all"):
            for gt in ("visib", "obj"):
                for rule in ("any", "top1", "agnostic"):
                    vals = ", ".join(f"IoU>={t}: {100 * self.recall[(subset, gt, rule, t)]:.2f}%" for t in (0.5, 0.75))
                    lines.append(f"  {subset:6s} recall vs bbox_{gt} ({rule}): {vals}")
        return "\n".join(lines)


def evaluate_recall(detector: Detector, bop_split_dir: str | os.PathLike, registry: ObjectRegistry, *,
                    min_score: float = 0.3, min_visib_fract: float = 0.1,
                    max_images: Optional[int] = None) -> RecallReport:
    """Box recall at IoU 0.5 and 0.75 against a BOP split's GT boxes, and mean CPU time per image.

    Instances of objects the detector has no class for, and instances less visible than
    ``min_visib_fract`` (needs ``scene_gt_info.json``), are not counted. ``max_images`` evaluates
    that many images spread evenly over the split (sorted by scene and image id).
    """
    split = Path(bop_split_dir)
    ds = BopDataset(split, min_visib_fract=min_visib_fract)
    if not ds.labelled:
        raise ValueError(f"{split}: split has no scene_gt.json (unlabelled); recall needs GT boxes")
    known = set(detector.spec.object_ids)
    name_of = dict(zip(detector.spec.object_ids, detector.spec.object_names))  # detections carry the name
    by_image: Dict[tuple, list] = {}
    for inst in ds.instances:
        if inst.obj_id in known:
            by_image.setdefault((inst.scene_id, inst.im_id), []).append(inst)
    images = sorted(by_image)
    if max_images is not None and 0 < max_images < len(images):  # evenly spread over the scenes
        images = [images[int(i)] for i in np.linspace(0, len(images) - 1, max_images).round()]
    saved, detector.min_score = detector.min_score, 0.0
    thr = (0.5, 0.75)
    hits = {(s, g, r, t): 0 for s in ("all", "target") for g in ("visib", "obj") for r in ("any", "top1", "agnostic")
            for t in thr}
    n, n_target, times = 0, 0, []
    try:
        for key in images:
            rgb = ds.load_rgb(*key)
            t0 = time.perf_counter()
            dets = detector.detect(rgb)
            times.append(time.perf_counter() - t0)
            for inst in by_image[key]:
                info = ds.gt_info(inst)
                if info is None:
                    raise ValueError(f"{split}: scene {inst.scene_id}: scene_gt_info.json needed for GT boxes")
                subsets = ("all", "target") if inst.obj_id == inst.scene_id else ("all",)
                n += 1
                n_target += len(subsets) - 1
                gts = {g: torch.tensor([bop_box_to_edges(b)], dtype=torch.float64)
                       for g, b in (("visib", info.bbox_visib), ("obj", info.bbox_obj))}
                confident = [d.box for d in dets if d.score >= min_score]
                if confident:
                    for g, gt_box in gts.items():
                        best = float(box_iou(gt_box, torch.tensor(confident, dtype=torch.float64)).max())
                        for t in thr:
                            for sub in subsets:
                                hits[(sub, g, "agnostic", t)] += best >= t
                mine = [d for d in dets if d.class_id == name_of[inst.obj_id]]
                if not mine:
                    continue
                boxes = torch.tensor([d.box for d in mine], dtype=torch.float64)
                scores = torch.tensor([d.score for d in mine])
                for g, gt_box in gts.items():
                    iou = box_iou(gt_box, boxes)[0]
                    best_any = float(iou[scores >= min_score].max()) if bool((scores >= min_score).any()) else 0.0
                    top1 = float(iou[int(scores.argmax())]) if float(scores.max()) >= min_score else 0.0
                    for t in thr:
                        for sub in subsets:
                            hits[(sub, g, "any", t)] += best_any >= t
                            hits[(sub, g, "top1", t)] += top1 >= t
    finally:
        detector.min_score = saved
    recall = {k: v / max(n if k[0] == "all" else n_target, 1) for k, v in hits.items()}
    return RecallReport(split=str(split), n_images=len(images), n_instances=n, n_targets=n_target,
                        min_score=min_score, min_visib_fract=min_visib_fract, recall=recall,
                        mean_time_s=float(np.mean(times)) if times else float("nan"), device=str(detector.device))
