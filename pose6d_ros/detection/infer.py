"""Running the detector: ``Detector.detect(rgb)``, :func:`detect_split` (BOP detection records for a
split), box recall (:func:`evaluate_recall`) and COCO-style average precision
(:func:`evaluate_detections`, :func:`evaluate_detector`) on a BOP split.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates (docs/conventions.md: pixel ``j``
spans ``[j - 0.5, j + 0.5]``), the convention of ``runtime.detection.Detection``. A box of the BOP
challenge's detection format ``(x, y, w, h)`` is COCO's: ``x, y`` is the top-left pixel *edge* with
the image spanning ``[0, W]``, so it is ``(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)``
(:func:`bop_box_to_edges`, inverse :func:`edges_to_bop_box`). AP compares a detection's ``bbox``
with the GT ``bbox_visib`` as the BOP/COCO evaluation does, both ``(x, y, w, h)`` taken as they are.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pose6d_ros._checks import check_shape
from pose6d_ros.data.bop import BopDataset, DetectionRecord
from pose6d_ros.detection.model import TV_OFFSET, DetectorSpec, load_detector
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime.detection import Detection

__all__ = ["Detector", "RecallReport", "evaluate_recall", "bop_box_to_edges", "edges_to_bop_box", "box_iou",
           "detect_split", "IOU_THRESHOLDS", "ClassAP", "DetectionReport", "evaluate_detections",
           "evaluate_detector"]

#: COCO's IoU thresholds 0.5, 0.55, ..., 0.95 (AP "0.5:0.95" is the mean over them).
IOU_THRESHOLDS: Tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
#: COCO's 101 recall points of the interpolated precision.
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


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


def edges_to_bop_box(boxes: Union[Sequence[float], np.ndarray, torch.Tensor]) -> np.ndarray:
    """``(..., 4)`` boxes ``(x0, y0, x1, y1)`` (pixel edges) -> BOP/COCO ``(x, y, w, h)`` float64, the
    inverse of :func:`bop_box_to_edges`: ``x = x0 + 0.5`` (the image's left edge is 0), ``w = x1 - x0``."""
    b = torch.as_tensor(boxes, dtype=torch.float64) if isinstance(boxes, torch.Tensor) else \
        torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    check_shape(b, ("...", 4), "boxes")
    b = b.detach().cpu().numpy()
    return np.concatenate([b[..., :2] + 0.5, b[..., 2:] - b[..., :2]], axis=-1)


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


# ---------------------------------------------------------------------------------------------
# Detections of a whole split (the `detect` CLI) and their average precision
# ---------------------------------------------------------------------------------------------


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """``(N,)`` rank of each element among the earlier elements of its group (0 for the first)."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return rank


def detect_split(detector: Detector, split_dir: str | os.PathLike, registry: Optional[ObjectRegistry] = None, *,
                 images: Optional[Sequence[Tuple[int, int]]] = None, limit: Optional[int] = None,
                 max_per_class: Optional[int] = None, progress: bool = False) -> List[DetectionRecord]:
    """Run ``detector`` (at its ``min_score``) over the images of a BOP split (or of a folder written by
    ``import_bag``: scene folders with ``rgb/`` and ``scene_camera.json``; no labels needed).

    Args:
        registry: gives ``category_id`` (the registry id of the detector's class name); default the
            ids the detector was trained with (``spec.object_ids``).
        images: ``[(scene_id, im_id), ...]`` to run on (default: all, sorted); ``limit``: the first that many.
        max_per_class: keep at most this many detections of each class per image (the best-scoring).
        progress: a one-line tqdm bar on stderr.

    Returns:
        the records in image order, then by decreasing score: ``bbox`` BOP/COCO ``(x, y, w, h)``
        (:func:`edges_to_bop_box`, clipped to the image), ``time`` the seconds the detector took on
        that image (reading the file excluded), the same for every record of the image.
    """
    ds = BopDataset(split_dir)
    keys = list(ds.images) if images is None else [(int(s), int(i)) for s, i in images]
    if limit is not None:
        keys = keys[:max(int(limit), 0)]
    if registry is None:
        id_of = dict(zip(detector.spec.object_names, detector.spec.object_ids))
    else:
        id_of = {name: registry.get(name).id for name in detector.spec.object_names}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), unit="img", dynamic_ncols=True, leave=True)
    out: List[DetectionRecord] = []
    try:
        for sid, iid in keys:
            rgb = ds.load_rgb(sid, iid)
            t0 = time.perf_counter()
            dets = detector.detect(rgb)
            dt = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if not dets:
                continue
            cats = np.array([id_of[d.class_id] for d in dets], dtype=np.int64)
            keep = np.ones(len(dets), bool) if max_per_class is None else _rank_within(cats) < int(max_per_class)
            H, W = rgb.shape[:2]
            edges = np.clip(np.array([d.box for d in dets], dtype=np.float64), -0.5,
                            [W - 0.5, H - 0.5, W - 0.5, H - 0.5])
            xywh = edges_to_bop_box(edges)
            out.extend(DetectionRecord(scene_id=sid, im_id=iid, obj_id=int(cats[k]), score=float(dets[k].score),
                                       bbox=tuple(float(v) for v in xywh[k]), time=dt)
                       for k in np.flatnonzero(keep))
    finally:
        if bar is not None:
            bar.close()
    return out


@dataclass
class ClassAP:
    """Average precision of one object class (COCO's definitions).

    Attributes:
        obj_id: the object.
        n_gt: GT instances counted (``visib_fract >= min_visib_fract``, non-empty box).
        n_ignored: GT instances not counted: a detection matched to one is neither a hit nor a false
            positive (COCO's "ignore").
        n_dets: detections of the class evaluated (at most ``max_dets`` per image).
        ap: per threshold of :data:`IOU_THRESHOLDS`, the 101-point interpolated AP; ``nan`` when ``n_gt == 0``.
        recall: per threshold, the fraction of the counted GT matched by a detection with score
            ``>= min_score`` (one detection per GT, greedy by score, as the AP matching).
    """

    obj_id: int
    n_gt: int
    n_ignored: int
    n_dets: int
    ap: Tuple[float, ...]
    recall: Tuple[float, ...]

    def ap_at(self, iou: float) -> float:
        return self.ap[_thr_index(iou)]

    def recall_at(self, iou: float) -> float:
        return self.recall[_thr_index(iou)]

    @property
    def ap_mean(self) -> float:
        """AP averaged over IoU 0.5:0.95 (COCO's AP)."""
        return float(np.mean(self.ap))


def _thr_index(iou: float) -> int:
    d = np.abs(np.asarray(IOU_THRESHOLDS) - float(iou))
    if d.min() > 1e-9:
        raise ValueError(f"IoU threshold {iou} is not one of {[round(t, 2) for t in IOU_THRESHOLDS]}")
    return int(d.argmin())


@dataclass
class DetectionReport:
    """AP and recall of a set of detections on a BOP split (:func:`evaluate_detections`).

    ``classes`` holds every evaluated object; the means (``mAP``, ``recall``) are over the classes
    with at least one counted GT instance (macro average, as COCO's mAP), ``recall_all`` over all
    counted instances (micro average).
    """

    split: str
    n_images: int
    min_visib_fract: float
    min_score: float
    gt_box: str
    classes: Dict[int, ClassAP] = field(default_factory=dict)

    def _with_gt(self) -> List[ClassAP]:
        return [c for c in self.classes.values() if c.n_gt > 0]

    def mAP(self, iou: Optional[float] = None) -> float:
        """Mean over classes of AP at ``iou`` (0.5, 0.55, ..., 0.95), or of AP 0.5:0.95 when ``None``."""
        cs = self._with_gt()
        if not cs:
            return float("nan")
        return float(np.mean([c.ap_mean if iou is None else c.ap_at(iou) for c in cs]))

    def recall(self, iou: float) -> float:
        """Mean over classes of the recall at ``iou``."""
        cs = self._with_gt()
        return float(np.mean([c.recall_at(iou) for c in cs])) if cs else float("nan")

    def recall_all(self, iou: float) -> float:
        """Fraction of all counted GT instances found at ``iou``."""
        n = sum(c.n_gt for c in self._with_gt())
        return sum(c.recall_at(iou) * c.n_gt for c in self._with_gt()) / n if n else float("nan")

    @property
    def n_gt(self) -> int:
        return sum(c.n_gt for c in self.classes.values())

    def summary(self) -> str:
        lines = [f"{self.split}: {self.n_images} images, {self.n_gt} GT instances with visib_fract >= "
                 f"{self.min_visib_fract} (bbox_{self.gt_box}); recall at score >= {self.min_score}",
                 f"  mAP 0.5:0.95 {100 * self.mAP():.2f}, AP50 {100 * self.mAP(0.5):.2f}, "
                 f"AP75 {100 * self.mAP(0.75):.2f}; recall@0.5 {100 * self.recall_all(0.5):.2f}%, "
                 f"recall@0.75 {100 * self.recall_all(0.75):.2f}% (of all instances)"]
        for c in self.classes.values():
            if c.n_gt:
                lines.append(f"  obj {c.obj_id:3d}: {c.n_gt:5d} GT ({c.n_ignored} ignored), {c.n_dets:6d} dets: "
                             f"AP {100 * c.ap_mean:6.2f}, AP50 {100 * c.ap_at(0.5):6.2f}, AP75 "
                             f"{100 * c.ap_at(0.75):6.2f}, recall@0.5 {100 * c.recall_at(0.5):6.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, object]:
        """Plain data for JSON (NaN where a class has no GT)."""
        return {"split": self.split, "n_images": self.n_images, "n_gt": self.n_gt,
                "min_visib_fract": self.min_visib_fract, "min_score": self.min_score, "gt_box": self.gt_box,
                "mAP": self.mAP(), "AP50": self.mAP(0.5), "AP75": self.mAP(0.75),
                "recall50": self.recall_all(0.5), "recall75": self.recall_all(0.75),
                "classes": {str(k): {"n_gt": c.n_gt, "n_ignored": c.n_ignored, "n_dets": c.n_dets,
                                     "AP": c.ap_mean, "AP50": c.ap_at(0.5), "AP75": c.ap_at(0.75),
                                     "recall50": c.recall_at(0.5), "recall75": c.recall_at(0.75)}
                            for k, c in self.classes.items()}}


def _match_image_class(iou: np.ndarray, ignored: np.ndarray, thr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one image for one class, at every threshold at once.

    Args:
        iou: ``(D, G)`` IoU of the detections (sorted by decreasing score) with the GT.
        ignored: ``(G,)`` GT not counted.
        thr: ``(T,)`` IoU thresholds.

    Returns:
        ``(T, D)`` matched, ``(T, D)`` matched to an ignored GT. Each detection takes the free counted
        GT of highest IoU ``>= thr``, else the free ignored one (ties: the last, as pycocotools).
    """
    T, (D, G) = len(thr), iou.shape
    matched = np.zeros((T, D), bool)
    to_ignored = np.zeros((T, D), bool)
    if G == 0:
        return matched, to_ignored
    taken = np.zeros((T, G), bool)
    rows = np.arange(T)
    # a detection below the lowest threshold with every GT matches nothing: only the others loop
    for d in np.flatnonzero(iou.max(axis=1) >= thr.min()):
        ok = ~taken & (iou[d][None, :] >= thr[:, None])  # (T, G)
        for pool in (ok & ~ignored[None], ok & ignored[None]):
            free = ~matched[:, d] & pool.any(axis=1)
            if not free.any():
                continue
            score = np.where(pool, iou[d][None, :], -1.0)
            g = G - 1 - np.argmax(score[:, ::-1], axis=1)  # the last of equal IoUs
            matched[free, d] = True
            to_ignored[free, d] = ignored[g[free]]
            taken[rows[free], g[free]] = True
    return matched, to_ignored


def _average_precision(scores: np.ndarray, matched: np.ndarray, to_ignored: np.ndarray, n_gt: int,
                       min_score: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(T,)`` 101-point interpolated AP and ``(T,)`` recall at ``min_score`` of one class.

    ``scores (N,)`` of all its detections (images concatenated), ``matched``/``to_ignored`` ``(T, N)``."""
    T = matched.shape[0]
    if n_gt == 0:
        return np.full(T, np.nan), np.full(T, np.nan)
    order = np.argsort(-scores, kind="mergesort")  # pycocotools' order for ties
    matched, to_ignored, scores = matched[:, order], to_ignored[:, order], scores[order]
    tp = matched & ~to_ignored
    fp = ~matched  # a detection matched to an ignored GT is neither
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(fp, axis=1, dtype=np.float64)
    rc = tp_sum / n_gt
    pr = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    ap = np.zeros(T)
    for t in range(T):  # 10 thresholds
        idx = np.searchsorted(rc[t], _RECALL_POINTS, side="left")
        ap[t] = np.where(idx < len(scores), pr[t][np.minimum(idx, len(scores) - 1)], 0.0).mean() if len(scores) else 0.0
    recall = tp[:, scores >= min_score].sum(axis=1) / n_gt
    return ap, recall


def evaluate_detections(dets: Sequence[DetectionRecord], split_dir: str | os.PathLike,
                        obj_ids: Union[Iterable[int], ObjectRegistry], *, min_visib_fract: float = 0.0,
                        min_score: float = 0.0, gt_box: Literal["visib", "obj"] = "visib",
                        images: Optional[Sequence[Tuple[int, int]]] = None, max_dets: int = 100) -> DetectionReport:
    """COCO-style AP (per class and mean) and recall of BOP-format detections against a split's GT boxes.

    Args:
        dets: detections (``load_detections`` of a file, or :func:`detect_split`); those of objects
            outside ``obj_ids`` are left out.
        split_dir: a labelled BOP split (``scene_gt.json`` and ``scene_gt_info.json`` per scene).
        obj_ids: the classes evaluated (an :class:`ObjectRegistry` means all of its ids).
        min_visib_fract: GT instances less visible than this (and empty ones) are *ignored*: not
            counted as misses, and a detection matched to one is no false positive (COCO's ignore).
        min_score: the score from which a detection counts for ``recall`` (AP uses all).
        gt_box: compare with ``bbox_visib`` (the BOP detection task) or ``bbox_obj`` (amodal).
        images: the images evaluated (default: every image of the split); a detection of another image
            of the split is left out, one of an image the split does not have is an error.
        max_dets: per image and class, only the best-scoring ``max_dets`` detections count (COCO: 100).

    Matching follows pycocotools' ``COCOeval.evaluateImg`` and AP its ``accumulate`` (101 recall
    points, precision envelope) at IoU 0.5, 0.55, ..., 0.95; IoU is computed on ``(x, y, w, h)``
    boxes as given (both in the BOP convention).
    """
    if isinstance(obj_ids, ObjectRegistry):
        obj_ids = obj_ids.ids
    wanted = sorted({int(o) for o in obj_ids})
    split = Path(split_dir)
    ds = BopDataset(split)
    ds.require_labels(info=True)
    keys = list(ds.images) if images is None else sorted((int(s), int(i)) for s, i in images)
    index = {k: n for n, k in enumerate(keys)}
    on_split = set(ds.images)
    for d in dets:
        if (d.scene_id, d.im_id) not in on_split:
            raise ValueError(f"{split}: detection of scene {d.scene_id} image {d.im_id}, which the split does not have")
    dets = [d for d in dets if d.obj_id in set(wanted) and (d.scene_id, d.im_id) in index]
    thr = np.asarray(IOU_THRESHOLDS)
    T = len(thr)
    # GT per (image, class): boxes and ignore flags
    gt: Dict[Tuple[int, int], Tuple[list, list]] = {}
    for (sid, iid) in keys:
        scene = ds.scenes[sid]
        for g, info in zip((scene.gts or {}).get(iid, []), (scene.gt_infos or {}).get(iid, [])):
            if g.obj_id not in wanted:
                continue
            box = info.bbox_visib if gt_box == "visib" else info.bbox_obj
            boxes, ign = gt.setdefault((index[(sid, iid)], g.obj_id), ([], []))
            boxes.append(box)
            ign.append(box[2] <= 0 or box[3] <= 0 or info.visib_fract < min_visib_fract)
    # detections: sorted by image, class, decreasing score; the best max_dets per image and class
    im = np.array([index[(d.scene_id, d.im_id)] for d in dets], dtype=np.int64)
    cls = np.array([d.obj_id for d in dets], dtype=np.int64)
    score = np.array([d.score for d in dets], dtype=np.float64)
    box = np.array([d.bbox for d in dets], dtype=np.float64).reshape(-1, 4)
    order = np.lexsort((-score, cls, im))
    im, cls, score, box = im[order], cls[order], score[order], box[order]
    group = im * (max(wanted, default=0) + 1) + cls
    keep = _rank_within(group) < max_dets
    im, cls, score, box, group = im[keep], cls[keep], score[keep], box[keep], group[keep]
    matched = np.zeros((T, len(score)), bool)
    to_ignored = np.zeros((T, len(score)), bool)
    starts = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1] if len(group) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(group)]
    xyxy = lambda b: torch.as_tensor(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1))  # noqa: E731
    for a, b in zip(starts, ends):
        g = gt.get((int(im[a]), int(cls[a])))
        if g is None:
            continue  # no GT of the class in the image: all false positives
        gboxes = np.asarray(g[0], dtype=np.float64).reshape(-1, 4)
        ign = np.asarray(g[1], dtype=bool)
        iou = box_iou(xyxy(box[a:b]), xyxy(gboxes)).numpy()
        matched[:, a:b], to_ignored[:, a:b] = _match_image_class(iou, ign, thr)
    classes: Dict[int, ClassAP] = {}
    for oid in wanted:
        sel = cls == oid
        flags = [np.asarray(ig, bool) for (_, o), (_, ig) in gt.items() if o == oid]
        ign = np.concatenate(flags) if flags else np.zeros(0, bool)
        n_gt = int((~ign).sum())
        ap, rec = _average_precision(score[sel], matched[:, sel], to_ignored[:, sel], n_gt, min_score)
        classes[oid] = ClassAP(obj_id=oid, n_gt=n_gt, n_ignored=int(ign.sum()), n_dets=int(sel.sum()),
                               ap=tuple(float(v) for v in ap), recall=tuple(float(v) for v in rec))
    return DetectionReport(split=str(split), n_images=len(keys), min_visib_fract=float(min_visib_fract),
                           min_score=float(min_score), gt_box=gt_box, classes=classes)


def evaluate_detector(detector: Detector, split_dir: str | os.PathLike, registry: Optional[ObjectRegistry] = None,
                      *, min_score: float = 0.3, min_visib_fract: float = 0.0, gt_box: Literal["visib", "obj"] = "visib",
                      max_images: Optional[int] = None,
                      progress: bool = False) -> Tuple[DetectionReport, List[DetectionRecord]]:
    """Run ``detector`` over a labelled split with no score threshold (AP needs the low-scoring
    detections too) and :func:`evaluate_detections` on its classes; ``min_score`` is the threshold of
    the recall. ``max_images`` evaluates that many images spread evenly over the split.

    Returns ``(report, detections)``; ``mean(d.time)`` over the images is the inference time."""
    ds = BopDataset(split_dir)
    ds.require_labels(info=True)
    keys = list(ds.images)
    if max_images is not None and 0 < max_images < len(keys):
        keys = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, max_images).round()]
    saved, detector.min_score = detector.min_score, 0.0
    try:
        dets = detect_split(detector, split_dir, registry, images=keys, progress=progress)
    finally:
        detector.min_score = saved
    ids = detector.spec.object_ids if registry is None else [registry.get(n).id for n in detector.spec.object_names]
    report = evaluate_detections(dets, split_dir, ids, min_visib_fract=min_visib_fract, min_score=min_score,
                                 gt_box=gt_box, images=keys)
    return report, dets
