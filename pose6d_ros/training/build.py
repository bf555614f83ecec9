"""Config -> objects, in one place (detectron2's ``from_config``) for both entry scripts.

Objects, model rows and data:
- ``data.objects`` lists the registry ids the run trains on; the model's object index ``i`` is the
  ``i``-th of them (the :class:`pose6d_ros.models.ModelCard` records it).
- the source domain is ``data.synthetic.SyntheticCrops`` (on-the-fly renders);
- the target domain is the simulated real suite built by ``pose6d_ros.data.build`` under ``data.root``:
  ``train/`` (unlabeled images, boxes in ``train_detections.json``), ``train_gt/`` (their withheld
  labels: real-label upper bound only), ``diag/`` (diagnostics only), ``test/``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pose6d_ros.training.config import get
from pose6d_ros.training.trainer import StepSampler

__all__ = ["RunObjects", "build_objects", "build_model", "build_optimizer", "SyntheticSource", "TargetCrops",
           "CropItem", "items_from_split", "first_per_object", "items_from_detections", "diagnostic_eval", "save_run_model"]

log = logging.getLogger("pose6d_ros.training")


@dataclass
class RunObjects:
    """The registry and the objects of a run, in model-row order."""

    registry: Any
    ids: List[int]

    @property
    def keypoints(self) -> torch.Tensor:
        """``(N, K, 3)`` metres, model-row order."""
        return torch.as_tensor(self.registry.keypoints(self.ids), dtype=torch.float32)

    def extent_points(self, max_points: int = 128) -> torch.Tensor:
        """``(N, P, 3)`` metres: convex-hull vertices of each mesh (their projection spans the same 2D
        box as the silhouette), at most ``max_points`` per object, repeated up to a common ``P``."""
        from pose6d_ros.registry import hull_vertices

        sets = []
        for oid in self.ids:
            v = hull_vertices(self.registry.get(oid).model_vertices())
            if len(v) > max_points:
                v = v[np.random.default_rng(0).choice(len(v), max_points, replace=False)]
            sets.append(v)
        P = max(len(v) for v in sets)
        return torch.as_tensor(np.stack([np.resize(v, (P, 3)) for v in sets]), dtype=torch.float32)

    def row_lookup(self) -> torch.Tensor:
        """``registry.index_of -> model row`` as a tensor (``-1`` for objects not in the run)."""
        lut = torch.full((len(self.registry),), -1, dtype=torch.long)
        for row, oid in enumerate(self.ids):
            lut[self.registry.index_of(oid)] = row
        return lut


def build_objects(cfg: Dict[str, Any]) -> RunObjects:
    from pose6d_ros.registry import ObjectRegistry

    from pose6d_ros._checks import reading

    reg_path = get(cfg, "data.registry")
    if reg_path:
        p = Path(reg_path)
        with reading(p, "data.registry"):
            registry = ObjectRegistry.from_bop_models_info(p) if p.suffix == ".json" else ObjectRegistry.from_yaml(p)
    else:
        from pose6d_ros.data.suites import load_suite_registry

        registry = load_suite_registry(get(cfg, "data.suite", "lm-lite"))
    ids = get(cfg, "data.objects") or registry.ids
    return RunObjects(registry, [int(i) for i in ids])


def build_model(cfg: Dict[str, Any], objects: RunObjects, device: torch.device) -> torch.nn.Module:
    """Φ from ``init.checkpoint`` (a ``save_model`` file) or from ``model`` config."""
    from pose6d_ros.models import PoseNet, load_model

    from pose6d_ros._checks import reading

    ckpt = get(cfg, "init.checkpoint")
    if ckpt:
        with reading(ckpt, "init.checkpoint"):
            model, card = load_model(ckpt)
        if list(card.object_ids) != objects.ids:
            raise ValueError(f"init.checkpoint {ckpt}: trained on objects {list(card.object_ids)}, "
                             f"config data.objects is {objects.ids}")
        log.info("Φ initialised from %s", ckpt)
    else:
        mcfg = dict(get(cfg, "model", {}) or {})
        mcfg.setdefault("num_objects", len(objects.ids))
        mcfg.setdefault("crop_size", int(get(cfg, "data.crop_size")))
        if len(objects.ids) == 1:
            mcfg.setdefault("conditioning", "none")
        model = PoseNet.from_config(mcfg)
    if model.crop_size != int(get(cfg, "data.crop_size")):
        raise ValueError(f"model crop size {model.crop_size} != data.crop_size {get(cfg, 'data.crop_size')}")
    if get(cfg, "init.freeze_bn", False):
        model.freeze_bn(True)
    return model.to(device).train()


def build_optimizer(cfg: Dict[str, Any], model: torch.nn.Module):
    """Adam over every parameter (frozen ones have no gradient and are skipped) + step schedule."""
    opt = torch.optim.Adam(model.parameters(), lr=float(get(cfg, "optim.lr")),
                           weight_decay=float(get(cfg, "optim.weight_decay", 0.0)))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(s) for s in get(cfg, "optim.lr_steps", [])],
                                                 gamma=float(get(cfg, "optim.lr_gamma", 0.1)))
    return opt, sched


class SyntheticSource:
    """Labelled source-domain batches (``data.synthetic.SyntheticCrops``), a function of the step.

    Sample ``i`` of the pool is deterministic, so with ``cache`` every crop is rendered once (on
    first use) and kept as uint8; colour augmentation is drawn fresh each step on top.
    """

    def __init__(self, cfg: Dict[str, Any], objects: RunObjects, batch_size: int, sampler_seed: int,
                 color_aug: bool = True, cache: Optional[bool] = None) -> None:
        from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops

        n = int(get(cfg, "data.synthetic_per_object")) * len(objects.ids)
        S = int(get(cfg, "data.crop_size"))
        seed = int(get(cfg, "seed", 0))  # the pool itself; the order of draws follows sampler_seed
        scfg = SyntheticConfig(size=S, object_ids=objects.ids)
        self.ds = SyntheticCrops(objects.registry, n, scfg, seed=seed)
        self.sampler = StepSampler(n, batch_size, seed=sampler_seed)
        cache_dir = get(cfg, "data.synthetic_cache_dir")
        self.cache_file = None
        if cache_dir:
            key = f"{get(cfg, 'data.suite', 'x')}_o{'-'.join(map(str, objects.ids))}_s{S}_n{n}_seed{seed}.pt"
            self.cache_file = Path(cache_dir) / key
        self.lut = objects.row_lookup()
        self.color_aug = color_aug
        self.cache = bool(get(cfg, "data.synthetic_cache", True)) if cache is None else cache
        if self.cache:
            K = objects.keypoints.shape[1]
            self._img = torch.zeros(n, 3, S, S, dtype=torch.uint8)
            self._kp = torch.zeros(n, K, 2)
            self._K = torch.zeros(n, 3, 3)
            self._obj = torch.zeros(n, dtype=torch.long)
            self._have = torch.zeros(n, dtype=torch.bool)
            if self.cache_file is not None and self.cache_file.is_file():
                self._load_pool(n)

    CHUNK = 32

    def _load_pool(self, n: int) -> None:
        """The rendered pool from ``cache_file``; a corrupt or foreign file is only a cache: warn, re-render."""
        from pose6d_ros._io import safe_torch_load

        try:
            st = safe_torch_load(self.cache_file, "synthetic pool cache")
            pool = [st[k] for k in ("img", "kp", "K", "obj", "have")]
            if any(not isinstance(x, torch.Tensor) or x.shape != y.shape or x.dtype != y.dtype
                   for x, y in zip(pool, (self._img, self._kp, self._K, self._obj, self._have))):
                raise RuntimeError(f"synthetic pool cache {self.cache_file}: tensors of other shapes or types")
        except (RuntimeError, KeyError, TypeError) as e:
            log.warning("%s; rendering the pool again", e)
            return
        self._img, self._kp, self._K, self._obj, self._have = pool
        log.info("synthetic pool: %d/%d crops from %s", int(self._have.sum()), n, self.cache_file)

    def _fetch(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        if not self.cache:
            b = self.ds.batch(idx)
            return {"image": b["image"], "keypoints": b["keypoints"], "object_index": self.lut[b["obj_index"]],
                    "K": b["K_crop"]}
        ix = torch.tensor(idx)
        # render whole fixed chunks: SyntheticCrops draws lighting/backgrounds per call, so a crop's
        # content must not depend on which batch first asked for it (exact resume)
        chunks = sorted({i // self.CHUNK for i in idx if not bool(self._have[i])})
        for c in chunks:
            todo = list(range(c * self.CHUNK, min(len(self._have), (c + 1) * self.CHUNK)))
            b = self.ds.batch(todo)
            t = torch.tensor(todo)
            self._img[t] = (b["image"].clamp(0, 1) * 255).round().to(torch.uint8)
            self._kp[t], self._K[t], self._obj[t] = b["keypoints"], b["K_crop"], self.lut[b["obj_index"]]
            self._have[t] = True
            if self.cache_file is not None and bool(self._have.all()):
                self._save_pool()
        return {"image": self._img[ix].float() / 255.0, "keypoints": self._kp[ix], "object_index": self._obj[ix],
                "K": self._K[ix]}

    def _save_pool(self) -> None:
        from pose6d_ros._io import atomic_torch_save
        from pose6d_ros.training import distributed as du

        if not du.is_main():
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.cache_file,
                          {"img": self._img, "kp": self._kp, "K": self._K, "obj": self._obj, "have": self._have})
        log.info("synthetic pool saved to %s", self.cache_file)

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> Dict[str, torch.Tensor]:
        from pose6d_ros.data.augment import color_augment

        b = self._fetch(self.sampler.indices(step, rank, world))
        if self.color_aug:  # the trainer seeds torch's global RNG per step, so this replays on resume
            b["image"] = color_augment(b["image"])
        return b


@dataclass(frozen=True)
class CropItem:
    """One object instance to crop: its image, object, box ``(x, y, w, h)`` and, if known, its pose."""

    scene_id: int
    im_id: int
    obj_id: int
    bbox: Tuple[float, float, float, float]
    R: Optional[np.ndarray] = None
    t: Optional[np.ndarray] = None


def items_from_split(split_path: str | Path, obj_ids: Sequence[int], targets_only: bool = True) -> List[CropItem]:
    """Labelled instances of a BOP split with their visible GT boxes (as a perfect detector gives).

    ``targets_only`` keeps the LINEMOD protocol: in scene ``k`` only object ``k`` is evaluated
    (the suites put one target object per scene; the others are clutter).
    """
    from pose6d_ros.data.bop import BopDataset

    ds = BopDataset(split_path, obj_ids=obj_ids)
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
    from pose6d_ros.data.bop import load_detections

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
                 padding: float = 1.3, jitter: Optional[Tuple[float, float]] = None, cache_images: int = 512) -> None:
        from pose6d_ros.data.bop import BopDataset

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
        from pose6d_ros.data.crops import bop_bbox_to_box, crop_images, jitter_boxes, square_windows
        from pose6d_ros.geometry.camera import crop_affine, crop_intrinsics, pixels_to_normalized
        from pose6d_ros.geometry.keypoints import project_points

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


@torch.no_grad()
def diagnostic_eval(model: torch.nn.Module, data: Dict[str, torch.Tensor], objects: RunObjects,
                    batch_size: int = 64) -> Dict[str, float]:
    """Keypoint error (crop px) and ADD(-S) / 2D-projection recall on a labelled target batch
    (:meth:`TargetCrops.batch`), scored as ``evaluate`` scores (``evaluation.evaluate.score_poses``).

    Logged during training to watch drift; it never feeds a loss nor picks checkpoints.
    """
    from pose6d_ros.evaluation.evaluate import predict_crops, score_poses

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    S = data["image"].shape[-1]
    Rs, ts, hs, fails = [], [], [], []
    for s in range(0, data["image"].shape[0], batch_size):
        sl = slice(s, s + batch_size)
        pnp, h = predict_crops(model, data["image"][sl].to(dev), data["K"][sl].to(dev),
                               data["object_index"][sl].to(dev), objects.keypoints.to(dev))
        Rs.append(pnp.R.cpu()), ts.append(pnp.t.cpu()), hs.append(h.cpu()), fails.append(pnp.failed.cpu())
    model.train(was)
    R, t, h, failed = torch.cat(Rs), torch.cat(ts), torch.cat(hs), torch.cat(fails)
    kp_err = ((h - data["keypoints"]) * (S / 2)).norm(dim=-1).mean(-1)  # px, mean over keypoints
    out = {"kp_err_median_px": float(kp_err.median()), "kp_err_mean_px": float(kp_err.mean()),
           "pnp_failed": float(failed.float().mean())}
    ok_add, ok_proj = [], []
    for row, oid in enumerate(objects.ids):
        sel = data["object_index"] == row
        if bool(sel.any()):  # the scoring of `evaluate` (full-image pixels, ADD-S over all vertices)
            ok = score_poses(objects.registry.get(oid), R[sel], t[sel], data["R"][sel], data["t"][sel],
                             data["K_full"][sel], failed[sel])
            ok_add.append(ok["ADD(-S)"]), ok_proj.append(ok["2D proj 5px"])
    out["add_recall"] = 100.0 * float(torch.cat(ok_add).float().mean())
    out["proj_recall"] = 100.0 * float(torch.cat(ok_proj).float().mean())
    return out


def save_run_model(path: str | Path, model: torch.nn.Module, objects: RunObjects, extra: Dict[str, Any],
                   training: Optional[Dict[str, Any]] = None) -> Path:
    """``save_model`` with the model card of the run's objects; ``training`` is the card's record of
    how the network was trained (trainer kind, recipe, teachers)."""
    from pose6d_ros.models import ModelCard, save_model
    from pose6d_ros.training.checkpoint import unwrap

    m = unwrap(model)
    card = ModelCard.create(object_ids=objects.ids, object_names=[objects.registry.get(i).name for i in objects.ids],
                            keypoints=objects.keypoints.double(), crop_size=m.crop_size,
                            backbone=m.config["backbone"], conditioning=m.config["conditioning"], extra=extra,
                            training=training)
    save_model(path, m, card)
    return Path(path)
