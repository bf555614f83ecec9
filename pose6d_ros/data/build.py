"""Build a simulated real dataset for a suite, in BOP format.

    python -m pose6d_ros.data.build --suite lm-lite --out data/lm-lite [--images-per-object N] [--seed S]

Layout (BOP, written through ``pose6d_ros.data.bop``)::

    OUT/objects.yaml            registry (meshes as pybullet_data:// references)
    OUT/camera.json             the camera
    OUT/models/                 models_info.json + obj_XXXXXX.ply (mm, vertex colours)
    OUT/train/SCENE/            UNLABELED real images (LINEMOD protocol: ~15%): scene_camera + rgb only
    OUT/train_detections.json   boxes for the unlabeled images (GT visible boxes, as a perfect detector)
    OUT/train_gt/SCENE/         the withheld labels of train (scene_gt*.json only; for upper bounds,
                                never for the self-supervised loss)
    OUT/diag/SCENE/             small labelled diagnostic split (drift monitoring only)
    OUT/test/SCENE/             labelled test images: scene_gt, scene_gt_info, masks, rgb
    OUT/build_info.json         arguments, counts and the measured build time

One scene per target object (scene id = object id); other registered objects appear as clutter
and are labelled too. Rendering runs in ``--workers`` processes, each with ONE pyrender scene.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pose6d_ros._checks import run_cli
from pose6d_ros._io import atomic_write_json
from pose6d_ros.data import bop
from pose6d_ros.data.simreal import APPEARANCE, RealDomainConfig, RealRenderer, bbox_of, sample_frames
from pose6d_ros.data.suites import SUITE_NAMES, load_suite_registry
from pose6d_ros.registry import ObjectRegistry

SPLITS = ("train", "diag", "test")


@dataclass
class BuildPlan:
    """Which image ids of each scene go to which split.

    Attributes:
        splits: ``{split: {scene_id: [im_id, ...]}}``.
    """

    splits: dict[str, dict[int, list[int]]]


def plan_splits(obj_ids: Sequence[int], images_per_object: int, train_fraction: float, diag_fraction: float,
                seed: int) -> BuildPlan:
    """Deterministically assign ``images_per_object`` image ids per object to train/diag/test.

    Image ids are contiguous per split and scene (BOP style); ``train`` gets
    ``round(train_fraction * N)``, ``diag`` ``round(diag_fraction * N)``, ``test`` the rest.
    """
    if not 0 <= train_fraction < 1 or not 0 <= diag_fraction < 1 or train_fraction + diag_fraction >= 1:
        raise ValueError(f"fractions: need 0 <= train, diag and train + diag < 1, got {train_fraction}, {diag_fraction}")
    n_train = int(round(train_fraction * images_per_object))
    n_diag = int(round(diag_fraction * images_per_object))
    n_test = images_per_object - n_train - n_diag
    splits: dict[str, dict[int, list[int]]] = {s: {} for s in SPLITS}
    for oid in obj_ids:
        for split, n in zip(SPLITS, (n_train, n_diag, n_test)):
            splits[split][int(oid)] = list(range(n))
    return BuildPlan(splits=splits)


def _split_seed(seed: int, split: str) -> int:
    return seed * 10 + SPLITS.index(split)


# ---------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(registry_yaml: str, cfg_json: str, seed: int, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    reg = ObjectRegistry.from_yaml(registry_yaml)
    cfg = _cfg_from_json(cfg_json)
    _WORKER.update(registry=reg, cfg=cfg, out=Path(out), renderer=RealRenderer(reg, cfg, seed=seed))


def _cfg_from_json(s: str):
    d = json.loads(s)
    d["K"] = np.asarray(d["K"])
    for k, v in d.items():
        if isinstance(v, list) and k != "K":
            d[k] = tuple(v)
    return RealDomainConfig(**d)


def _render_job(job: tuple) -> list[dict]:
    """Render and write the images of one job ``(split, specs, depth)``; return their annotations."""
    split, specs, write_depth = job
    rr, out = _WORKER["renderer"], _WORKER["out"]
    labelled = split != "train"
    records = []
    for spec in specs:
        fr = rr.render(spec)
        split_path = out / split
        bop.save_rgb(split_path, spec.scene_id, spec.im_id, fr.rgb, ext=".jpg")
        if write_depth:
            bop.save_depth(split_path, spec.scene_id, spec.im_id, fr.depth, depth_unit=1e-4)
        infos = []
        for k, (m, mv) in enumerate(zip(fr.masks, fr.masks_visib)):
            n_all, n_vis = int(m.sum()), int(mv.sum())
            infos.append(dict(bbox_obj=bbox_of(m), bbox_visib=bbox_of(mv), px_count_all=n_all, px_count_valid=n_all,
                              px_count_visib=n_vis, visib_fract=(n_vis / n_all) if n_all else 0.0))
            if labelled:
                bop.save_mask(split_path, spec.scene_id, spec.im_id, k, m, visib=False)
                bop.save_mask(split_path, spec.scene_id, spec.im_id, k, mv, visib=True)
        records.append(dict(split=split, scene_id=spec.scene_id, im_id=spec.im_id, obj_ids=list(spec.obj_ids),
                            poses=spec.poses, infos=infos))
    return records


# ---------------------------------------------------------------------- main


def build(suite: str, out: Path, images_per_object: int = 120, seed: int = 0, workers: int = 2,
          train_fraction: float = 0.15, diag_fraction: float = 0.05, depth: bool = False,
          object_ids: Sequence[int] | None = None, chunk: int = 8, log=print, cfg=None,
          appearance: str = "standard") -> dict:
    """Build the simulated real dataset of ``suite`` into ``out``; returns the build summary.

    ``cfg`` is a ``simreal.RealDomainConfig`` (default: the LINEMOD-like defaults); ``appearance``
    names its preset in the summary.
    """
    t0 = time.time()
    out = Path(out)
    if images_per_object < 1 or workers < 1:
        raise ValueError(f"images_per_object and workers must be >= 1, got {images_per_object}, {workers}")
    registry = load_suite_registry(suite)
    unknown = sorted(set(int(o) for o in object_ids or ()) - set(registry.ids))
    if unknown:
        raise ValueError(f"objects {unknown} are not in suite {suite} (its ids: {registry.ids})")
    out.mkdir(parents=True, exist_ok=True)
    reg_yaml = out / "objects.yaml"
    registry.to_yaml(reg_yaml)
    cfg = cfg or RealDomainConfig()
    _write_models(registry, out / "models")
    bop.save_camera(out / bop.CAMERA, bop.DatasetCamera(K=cfg.K, width=cfg.width, height=cfg.height,
                                                        depth_unit=1e-4 if depth else None))
    ids = list(object_ids) if object_ids is not None else registry.ids
    plan = plan_splits(ids, images_per_object, train_fraction, diag_fraction, seed)
    jobs = []
    for split, scenes in plan.splits.items():
        for oid, im_ids in scenes.items():
            specs = sample_frames(registry, oid, im_ids, cfg, seed=_split_seed(seed, split))
            jobs += [(split, specs[i:i + chunk], depth) for i in range(0, len(specs), chunk)]
    cfg_json = json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(cfg).items()})
    init_args = (str(reg_yaml), cfg_json, seed, str(out))
    n_frames = sum(len(j[1]) for j in jobs)
    log(f"{suite}: rendering {n_frames} frames of {len(ids)} objects with {workers} worker(s)")
    records: list[dict] = []
    if workers <= 1:
        _init_worker(*init_args)
        for j in jobs:
            records += _render_job(j)
        _WORKER["renderer"].close()
        _WORKER.clear()
    else:
        ctx = mp.get_context("spawn")  # no GL state is inherited by forking
        with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            for i, recs in enumerate(pool.imap_unordered(_render_job, jobs)):
                records += recs
                if (i + 1) % max(1, len(jobs) // 10) == 0:
                    log(f"  {len(records)}/{n_frames} frames, {time.time() - t0:.0f} s")
    _write_annotations(out, records, cfg)
    summary = dict(suite=suite, images_per_object=images_per_object, seed=seed, workers=workers,
                   train_fraction=train_fraction, diag_fraction=diag_fraction, appearance=appearance, frames=n_frames,
                   objects=len(ids), counts={s: sum(len(v) for v in sc.values()) for s, sc in plan.splits.items()},
                   seconds=round(time.time() - t0, 1))
    atomic_write_json(out / "build_info.json", summary)
    log(f"{suite}: done in {summary['seconds']} s -> {out}")
    return summary


def _write_annotations(out: Path, records: list[dict], cfg) -> None:
    by_scene: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        by_scene.setdefault((r["split"], r["scene_id"]), []).append(r)
    detections = []
    for (split, sid), recs in sorted(by_scene.items()):
        recs.sort(key=lambda r: r["im_id"])
        cams = {r["im_id"]: bop.CameraRecord(K=cfg.K) for r in recs}
        gts = {r["im_id"]: [bop.GtRecord(obj_id=o, R=T[:3, :3], t=T[:3, 3]) for o, T in zip(r["obj_ids"], r["poses"])]
               for r in recs}
        infos = {r["im_id"]: [bop.GtInfoRecord(**i) for i in r["infos"]] for r in recs}
        if split == "train":
            bop.save_scene(out / "train", bop.SceneRecord(scene_id=sid, cameras=cams))
            bop.save_scene(out / "train_gt", bop.SceneRecord(scene_id=sid, cameras=cams, gts=gts, gt_infos=infos))
            for r in recs:  # the target's visible box, as a perfect detector would give it
                x, y, w, h = r["infos"][0]["bbox_visib"]
                if w > 0:
                    detections.append(bop.DetectionRecord(scene_id=sid, im_id=r["im_id"], obj_id=r["obj_ids"][0],
                                                          score=1.0, bbox=(x, y, w, h)))
        else:
            bop.save_scene(out / split, bop.SceneRecord(scene_id=sid, cameras=cams, gts=gts, gt_infos=infos))
    bop.save_detections(out / "train_detections.json", detections)


def _write_models(registry: ObjectRegistry, models_dir: Path) -> None:
    """BOP models: ``obj_XXXXXX.ply`` in millimetres with vertex colours, plus ``models_info.json``."""
    import trimesh

    models_dir.mkdir(parents=True, exist_ok=True)
    infos = {}
    for o in registry:
        tm = o.load_mesh()
        mm = trimesh.Trimesh(vertices=np.asarray(tm.vertices) * 1000.0, faces=tm.faces,
                             vertex_colors=np.asarray(tm.visual.vertex_colors), process=False)
        mm.export(models_dir / f"obj_{o.id:06d}.ply")
        v = np.asarray(tm.vertices)
        infos[o.id] = bop.ModelInfo(obj_id=o.id, diameter=o.diameter, min=v.min(0), size=np.ptp(v, axis=0),
                                    symmetries_discrete=list(o.symmetries_discrete),
                                    symmetries_continuous=[(s.axis, s.offset) for s in o.symmetries_continuous])
    bop.save_models_info(models_dir / bop.MODELS_INFO, infos)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``build_suite``: exit code 0 (the summary in ``OUT/build_info.json``), or 2 with
    one line on bad input."""
    p = argparse.ArgumentParser(description="Build a simulated real dataset (BOP format) for an object suite.")
    p.add_argument("--suite", required=True, choices=SUITE_NAMES)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--images-per-object", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-fraction", type=float, default=0.15, help="unlabeled train share (LINEMOD: 15%%)")
    p.add_argument("--diag-fraction", type=float, default=0.05, help="labelled diagnostic share")
    p.add_argument("--depth", action="store_true", help="also write depth PNGs (0.1 mm units)")
    p.add_argument("--objects", type=int, nargs="*", help="only these object ids")
    p.add_argument("--appearance", choices=sorted(APPEARANCE), default="standard",
                   help="camera appearance preset of the simulated real domain (simreal.APPEARANCE)")
    a = p.parse_args(argv)

    def body() -> None:
        s = build(a.suite, a.out, a.images_per_object, a.seed, a.workers, a.train_fraction, a.diag_fraction,
                  a.depth, a.objects, cfg=RealDomainConfig(**APPEARANCE[a.appearance]), appearance=a.appearance)
        counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
        print(f"{a.out}: {s['frames']} frames of {s['objects']} objects ({counts}) in {s['seconds']} s\n"
              f"result: {a.out / 'build_info.json'}", flush=True)

    return run_cli("build_suite", body)


if __name__ == "__main__":
    raise SystemExit(main())
