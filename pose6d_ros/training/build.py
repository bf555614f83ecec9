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
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from pose6d_ros._checks import reading
from pose6d_ros._io import atomic_torch_save, safe_torch_load
from pose6d_ros.data.augment import color_augment
from pose6d_ros.data.crops import DEFAULT_CROP_PADDING
from pose6d_ros.data.suites import load_suite_registry
from pose6d_ros.data.synthetic import SyntheticConfig, SyntheticCrops
from pose6d_ros.models import ModelCard, PoseNet, load_model, save_model
from pose6d_ros.registry import ObjectRegistry, RunObjects
from pose6d_ros.training import distributed as du
from pose6d_ros.training.checkpoint import unwrap
from pose6d_ros.training.config import DataSection, InitSection, ModelSection, OptimSection
from pose6d_ros.training.trainer import StepSampler

__all__ = ["build_objects", "build_model", "build_optimizer", "SyntheticSource", "save_run_model"]

log = logging.getLogger("pose6d_ros.training")


def build_objects(data: DataSection) -> RunObjects:
    """The registry (``data.registry``, else the suite's) and the run's objects (``data.objects``, else
    all of the registry's), in model-row order."""
    reg_path = data.registry
    if reg_path:
        p = Path(reg_path)
        with reading(p, "data.registry"):
            registry = ObjectRegistry.from_bop_models_info(p) if p.suffix == ".json" else ObjectRegistry.from_yaml(p)
    else:
        registry = load_suite_registry(data.suite)
    ids = data.objects or registry.ids
    return RunObjects(registry, [int(i) for i in ids])


def build_model(model_cfg: ModelSection, init: InitSection, crop_size: int, objects: RunObjects,
                device: torch.device) -> torch.nn.Module:
    """Φ from ``init.checkpoint`` (a ``save_model`` file) or from the ``model`` section; its crop size
    must be ``crop_size`` (``data.crop_size``)."""
    ckpt = init.checkpoint
    if ckpt:
        with reading(ckpt, "init.checkpoint"):
            model, card = load_model(ckpt)
        if list(card.object_ids) != objects.ids:
            raise ValueError(f"init.checkpoint {ckpt}: trained on objects {list(card.object_ids)}, "
                             f"config data.objects is {objects.ids}")
        log.info("Φ initialised from %s", ckpt)
    else:
        mcfg = model_cfg.given()
        mcfg.setdefault("num_objects", len(objects.ids))
        mcfg.setdefault("crop_size", crop_size)
        if len(objects.ids) == 1:
            mcfg.setdefault("conditioning", "none")
        model = PoseNet.from_config(mcfg)
    if model.crop_size != crop_size:
        raise ValueError(f"model crop size {model.crop_size} != data.crop_size {crop_size}")
    if init.freeze_bn:
        model.freeze_bn(True)
    return model.to(device).train()


def build_optimizer(optim: OptimSection, model: torch.nn.Module):
    """Adam over every parameter (frozen ones have no gradient and are skipped) + step schedule."""
    opt = torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(optim.lr_steps), gamma=optim.lr_gamma)
    return opt, sched


class SyntheticSource:
    """Labelled source-domain batches (``data.synthetic.SyntheticCrops``), a function of the step.

    Sample ``i`` of the pool is deterministic, so with ``cache`` every crop is rendered once (on
    first use) and kept as uint8; colour augmentation is drawn fresh each step on top.

    Args:
        data: the ``data`` section (pool size, crop size, cache).
        objects: the run's objects.
        batch_size: crops per step.
        sampler_seed: the order of draws.
        pool_seed: the pool itself (the recipe's ``seed``).
    """

    def __init__(self, data: DataSection, objects: RunObjects, batch_size: int, sampler_seed: int, *,
                 pool_seed: int, color_aug: bool = True, cache: Optional[bool] = None) -> None:
        n = data.synthetic_per_object * len(objects.ids)
        S = data.crop_size
        seed = pool_seed
        scfg = SyntheticConfig(size=S, object_ids=objects.ids, padding=data.crop_padding)
        self.ds = SyntheticCrops(objects.registry, n, scfg, seed=seed)
        self.sampler = StepSampler(n, batch_size, seed=sampler_seed)
        cache_dir = data.synthetic_cache_dir
        self.cache_file = None
        if cache_dir:
            # the default padding leaves the name of the pools rendered before it was a key
            pad = "" if data.crop_padding == DEFAULT_CROP_PADDING else f"_p{data.crop_padding:g}"
            # the registry's content is in the key: the same suite name with other meshes or appearance
            # (e.g. a suite rebuilt with --appearance hard) renders another pool
            fp = objects.registry.fingerprint(objects.ids)[:12]
            key = f"{data.suite}_o{'-'.join(map(str, objects.ids))}_s{S}{pad}_n{n}_seed{seed}_{fp}.pt"
            self.cache_file = Path(cache_dir) / key
        self.lut = objects.row_lookup()
        self.color_aug = color_aug
        self.cache = data.synthetic_cache if cache is None else cache
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
        if not du.is_main():
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.cache_file,
                          {"img": self._img, "kp": self._kp, "K": self._K, "obj": self._obj, "have": self._have})
        log.info("synthetic pool saved to %s", self.cache_file)

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> Dict[str, torch.Tensor]:
        b = self._fetch(self.sampler.indices(step, rank, world))
        if self.color_aug:  # the trainer seeds torch's global RNG per step, so this replays on resume
            b["image"] = color_augment(b["image"])
        return b


def save_run_model(path: str | Path, model: torch.nn.Module, objects: RunObjects, crop_padding: float,
                   extra: Dict[str, Any], training: Optional[Dict[str, Any]] = None) -> Path:
    """``save_model`` with the model card of the run's objects and crop padding (``data.crop_padding``);
    ``training`` is the card's record of how the network was trained (trainer kind, recipe, teachers)."""
    m = unwrap(model)
    card = ModelCard.create(object_ids=objects.ids, object_names=[objects.registry.get(i).name for i in objects.ids],
                            keypoints=objects.keypoints.double(), crop_size=m.crop_size,
                            backbone=m.config["backbone"], conditioning=m.config["conditioning"],
                            crop_padding=crop_padding, extra=extra, training=training)
    save_model(path, m, card)
    return Path(path)
