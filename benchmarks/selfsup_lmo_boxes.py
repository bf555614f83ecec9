"""The self-supervised stage on REAL images with the dataset's boxes vs boxes from our detector (issue 13).

    .venv/bin/python benchmarks/selfsup_lmo_boxes.py                    # <= 25 min on 2 cores
    .venv/bin/python benchmarks/selfsup_lmo_boxes.py --mode smoke --detector /tmp/det.pt   # minutes

On the real LM-O images of ``--lmo`` (``../shared/data/lmo-real``, read in place; its README):

1. the registry of the eight LM-O objects (``ObjectRegistry.from_bop_models_info``, meshes read from
   ``<lmo>/models``) is written to the run folder;
2. ``detect`` (the CLI, as a user runs it) writes the detector's boxes for ``<lmo>/unlabeled``
   (``--min-score``, one box per object and image), and they are compared with the dataset's own boxes
   there (``detections_bop.json``: every object >= 10% visible): recall of the given boxes at IoU 0.5 by
   a detect box of the same object, and the share of detect boxes that match a given one;
3. Φ is trained on synthetic crops of the run's objects (``--objects``, default ape, can, driller: the
   README's table); the LM-O camera is LINEMOD's Kinect (``data.simreal.LINEMOD_K``, what the
   synthetic source draws its poses for, equal to ``<lmo>/camera.json`` and to every image's K);
4. two self-supervised runs start from that init with the same steps and seed, on the same unlabeled
   images (``data.train_split``), one cut around the given boxes, one around the detect boxes
   (``data.detections``); ``--jobs 2`` runs them at once, one thread each;
5. the three networks are scored on ``<lmo>/val`` (20 labelled images, never trained on), cropped around
   the GT visible boxes of every run object in every image (LM-O protocol: several objects per image,
   not LINEMOD's one target per scene): ADD(-S) at 0.1 d and 2D projection at 5 px, per object and
   mean, counting objects >= 30% visible, then all; and the median errors (ADD / d, projection px),
   which move when the recalls sit at 0.

``results.json`` and ``results.md`` go to ``--out/<mode>``. A stage finished by an earlier call is
reused (``--fresh`` starts over); an unfinished training resumes from its checkpoint. The recipe is
that of ``training/selfsup_lm_lite.yaml`` at the demo's budget (MobileNetV3-small, crop 64, synthetic
init 1000 steps at lr 2e-3, self-supervised 400 steps at lr 1e-4, early stages frozen 120 steps,
BatchNorm re-estimated on the unlabeled crops), pinned here so that an edit of the demo recipe does not
change this benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torchvision.models  # noqa: F401  (load before OSMesa, see rendering notes)

from pose6d_ros.training.config import load_config, merge

ROOT = Path(__file__).resolve().parents[1]
#: beside the checkout (as on the development machines), else /work/shared
LMO_DEFAULT = next((p for p in (ROOT.parent / "shared" / "data" / "lmo-real", Path("/work/shared/data/lmo-real"))
                    if p.is_dir()), ROOT.parent / "shared" / "data" / "lmo-real")
DETECTOR_DEFAULT = ROOT / "runs" / "bench_detector" / "default" / "lmo" / "detector.pt"
LMO_NAMES = {1: "ape", 5: "can", 6: "cat", 8: "driller", 9: "duck", 10: "eggbox", 11: "glue", 12: "holepuncher"}
RUNS = {"given": "selfsup given boxes", "detect": "selfsup detect boxes"}
METRICS = ("ADD(-S)", "2D proj 5px")
VISIB = (0.3, 0.0)

MODES: Dict[str, Dict[str, Any]] = {
    # synthetic-init steps and pool per object, self-supervised steps (early stages frozen for the first
    # `freeze` of them), batch, BN re-estimation epochs, detect's score floor (a 2-step smoke detector
    # scores nothing at 0.5), mesh faces of the in-loop renderer
    "default": dict(syn_steps=1000, syn_per_object=800, ss_steps=400, freeze=120, batch=16, adapt_bn=2,
                    min_score=0.5, max_faces=2000),
    "smoke": dict(syn_steps=3, syn_per_object=8, ss_steps=2, freeze=1, batch=4, adapt_bn=1, min_score=0.0,
                  max_faces=300),
}


def recipe(m: Dict[str, Any], out: Path, lmo: Path, registry: Path, objects: Sequence[int], detections: Path,
           cache: Path, threads: int) -> Dict[str, Any]:
    """The self-supervised recipe of one run (its ``init.synthetic`` trains the shared init)."""
    syn = m["syn_steps"]
    return merge(load_config(ROOT / "training/selfsup_lm_lite.yaml"), {
        "seed": 0, "threads": threads, "output_dir": str(out),
        # suite: only a part of the synthetic pool cache's name; the pool stays in the run folder
        "data": {"root": None, "suite": "lmo-real", "registry": str(registry), "objects": list(objects),
                 "train_split": str(lmo / "unlabeled"), "detections": str(detections), "crop_size": 64,
                 "batch_size": m["batch"], "synthetic_batch_size": m["batch"],
                 "synthetic_per_object": m["syn_per_object"], "synthetic_cache_dir": str(cache),
                 "diag_per_object": 0},
        "model": {"backbone": "mobilenet_v3_small", "conditioning": "cin"},
        "optim": {"lr": 1e-4, "max_steps": m["ss_steps"], "lr_steps": []},
        "init": {"checkpoint": None, "synthetic": {"steps": syn, "lr": 2e-3, "lr_steps": [int(0.8 * syn)],
                                                   "final_test": False},
                 "freeze_early_stages": 2, "freeze_early_steps": m["freeze"], "adapt_bn_epochs": m["adapt_bn"]},
        "selfsup": {"render": {"max_faces": m["max_faces"]}},
        "log": {"progress": False, "tensorboard": True, "period": 50},
        "checkpoint": {"period": 100},
        "eval": {"final_test": False, "period": 0},
    })


def _stamped(out: Path, cfg: Dict[str, Any]) -> bool:
    """True when ``out`` holds a finished model trained with ``cfg`` (its threads aside); an unfinished
    run gets the stamp."""
    stamp = out / "bench-config.json"
    settings = json.dumps({k: v for k, v in cfg.items() if k != "threads"}, sort_keys=True, default=str)
    if stamp.is_file() and stamp.read_text() != settings:
        raise SystemExit(f"selfsup_lmo_boxes: {out} was trained with other settings: use --fresh or another --out")
    if (out / "model.pt").is_file() and stamp.is_file():
        print(f"[selfsup_lmo_boxes] reusing {out / 'model.pt'}", flush=True)
        return True
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(settings)
    return False


def train_synthetic(cfg: Dict[str, Any]) -> Path:
    """The synthetic-only init (``init.synthetic`` of ``cfg``) into ``output_dir/synthetic``."""
    from pose6d_ros.training.config import as_recipe
    from pose6d_ros.training.selfsup import pretrain_synthetic

    out = Path(cfg["output_dir"]) / "synthetic"
    # what the init depends on: not the self-supervised keys, nor which boxes
    data = {k: v for k, v in cfg["data"].items() if k != "detections"}
    if not _stamped(out, {"seed": cfg["seed"], "data": data, "model": cfg["model"], "init": cfg["init"]["synthetic"]}):
        pretrain_synthetic(as_recipe(cfg), resume=True)
    return out / "model.pt"


def train_selfsup(cfg: Dict[str, Any]) -> str:
    """One self-supervised run (in a worker process with ``--jobs``); returns its ``model.pt``."""
    from pose6d_ros.training import selfsup

    out = Path(cfg["output_dir"])
    if not _stamped(out, cfg):
        selfsup.train(cfg, resume=True)
    if not (out / "model.pt").is_file():
        raise RuntimeError(f"self-supervised run {out} finished without a model.pt")
    return str(out / "model.pt")


def run_detect(detector: Path, registry: Path, split: Path, out: Path, min_score: float, threads: int) -> Path:
    """``detect`` over ``split`` as a user runs it (one box per object and image); reused when the same
    detector file (path, size, mtime) and score floor wrote it."""
    key = json.dumps({"detector": str(detector.resolve()), "size": detector.stat().st_size,
                      "mtime": detector.stat().st_mtime, "min_score": min_score})
    stamp = out.with_suffix(".stamp")
    if out.is_file() and stamp.is_file() and stamp.read_text() == key:
        print(f"[selfsup_lmo_boxes] reusing {out}", flush=True)
        return out
    cmd = [sys.executable, "-m", "pose6d_ros.detection.detect", "--model", str(detector), "--objects", str(registry),
           "--split", str(split), "--out", str(out), "--min-score", str(min_score), "--max-per-class", "1",
           "--threads", str(threads), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log = out.with_suffix(".log")
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"selfsup_lmo_boxes: detect exited with {proc.returncode} (log: {log}): "
                         + (proc.stderr.strip().splitlines() or ["?"])[-1])
    print(f"[selfsup_lmo_boxes] {proc.stdout.strip().splitlines()[-1]}", flush=True)
    stamp.write_text(key)
    return out


def compare_boxes(given: Path, detected: Path, objects: Sequence[int], iou: float = 0.5) -> Dict[str, Any]:
    """Per object: the given boxes, how many of them a detect box of the same object in the same image
    overlaps at IoU >= ``iou`` (recall), the detect boxes and how many of them match a given box (precision),
    and the mean IoU of each given box with its best detect box."""
    from pose6d_ros.data.bop import load_detections
    from pose6d_ros.detection.infer import bop_box_to_edges, box_iou

    def table(path: Path):
        recs = [d for d in load_detections(path) if d.obj_id in set(objects)]
        keys = torch.tensor([[d.scene_id, d.im_id, d.obj_id] for d in recs], dtype=torch.long).reshape(-1, 3)
        boxes = torch.tensor([bop_box_to_edges(d.bbox) for d in recs], dtype=torch.float64).reshape(-1, 4)
        return keys, boxes

    kg, bg = table(given)
    kd, bd = table(detected)
    same = (kg[:, None, :] == kd[None, :, :]).all(-1)  # (G, D): same image and object
    ious = box_iou(bg, bd) * same
    best_g = ious.max(1).values if ious.shape[1] else torch.zeros(len(kg), dtype=torch.float64)
    best_d = ious.max(0).values if ious.shape[0] else torch.zeros(len(kd), dtype=torch.float64)
    out: Dict[str, Any] = {"iou": iou, "objects": {}}
    for oid in list(objects) + ["all"]:
        sg = torch.ones(len(kg), dtype=torch.bool) if oid == "all" else kg[:, 2] == oid
        sd = torch.ones(len(kd), dtype=torch.bool) if oid == "all" else kd[:, 2] == oid
        ng, nd = int(sg.sum()), int(sd.sum())
        out["objects"][LMO_NAMES.get(oid, str(oid)) if oid != "all" else "all"] = {
            "given": ng, "detect": nd,
            "recall": 100.0 * float((best_g[sg] >= iou).float().mean()) if ng else float("nan"),
            "precision": 100.0 * float((best_d[sd] >= iou).float().mean()) if nd else float("nan"),
            "mean_best_iou": float(best_g[sg].mean()) if ng else float("nan")}
    return out


def evaluate(model_path: Path, val: Path, registry_path: Path, objects: Sequence[int],
             min_visib: float) -> Dict[str, Any]:
    """ADD(-S) / 2D-projection recall and median errors of ``model_path`` on ``val``, cut around the GT
    visible boxes of every instance of ``objects`` at least ``min_visib`` visible."""
    from pose6d_ros.data.target_crops import TargetCrops, items_from_split
    from pose6d_ros.evaluation.evaluate import object_errors, predict_split, score_predictions
    from pose6d_ros.models import load_model
    from pose6d_ros.registry import ObjectRegistry, RunObjects

    model, card = load_model(model_path)
    registry = ObjectRegistry.from_yaml(registry_path)
    items = items_from_split(val, list(objects), targets_only=False, min_visib_fract=min_visib)
    crops = TargetCrops(val, items, RunObjects(registry, list(card.object_ids)), card.crop_size,
                        padding=card.crop_padding)
    preds = predict_split(model, crops, torch.from_numpy(card.keypoints_array).float())
    names = {o: LMO_NAMES.get(o, registry.get(o).name) for o in objects}
    table = score_predictions(preds, registry, names=names)
    errs = object_errors(preds, registry)  # keyed by the registry's names
    med = {names[o]: {"ADD/d": float(torch.as_tensor(errs[registry.get(o).name].add).median())
                      / registry.get(o).diameter,
                      "proj px": float(torch.as_tensor(errs[registry.get(o).name].proj).median())}
           for o in objects if registry.get(o).name in errs}
    return {"min_visib": min_visib, **table.to_dict(), "median_errors": med}


def _pool(jobs: int, fn, args: List[Any]) -> List[Any]:
    if jobs <= 1 or len(args) <= 1:
        return [fn(a) for a in args]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(args)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, args))


def markdown(res: Dict[str, Any]) -> str:
    names = [LMO_NAMES.get(o, str(o)) for o in res["objects"]]
    lines = [f"Self-supervised stage on the real LM-O images, given boxes vs `detect` boxes ({res['mode']} mode; "
             f"{res['steps']['synthetic']} synthetic + {res['steps']['selfsup']} self-supervised steps).", ""]
    for key in (f"visib>={v:g}" for v in VISIB):
        ev = res["eval"][key]
        rows = {"synthetic only": ev["synthetic"], **{RUNS[r]: ev[r] for r in RUNS}}
        n = next(iter(rows.values()))["counts"]
        lines += [f"**val, objects {key.replace('visib>=', 'visible >= ')} (instances: "
                  + ", ".join(f"{k} {n.get(k, 0)}" for k in names) + ")**: ADD(-S) / 2D proj 5 px recall (%), "
                  "median ADD / d and projection error (px)", "",
                  "| Φ | " + " | ".join(names) + " | mean |", "|---|" + "---:|" * (len(names) + 1)]

        def cell(ev_row: Dict[str, Any], k: str, sign: str = "") -> str:
            if k not in ev_row["rows"]:
                return "–"
            r, med = ev_row["rows"][k], ev_row["median_errors"].get(k)
            text = f"{r['ADD(-S)']:{sign}.1f} / {r['2D proj 5px']:{sign}.1f}"
            return text + (f" ({med['ADD/d']:{sign}.2f} d, {med['proj px']:{sign}.1f} px)" if med else "")

        for label, ev_row in rows.items():
            lines.append(f"| {label} | " + " | ".join(cell(ev_row, k) for k in names)
                         + f" | **{ev_row['mean']['ADD(-S)']:.1f} / {ev_row['mean']['2D proj 5px']:.1f}** |")
        d = ev["difference"]
        lines.append("| detect − given | " + " | ".join(cell(d, k, "+") for k in names)
                     + f" | **{d['mean']['ADD(-S)']:+.1f} / {d['mean']['2D proj 5px']:+.1f}** |")
        lines.append("")
    b = res["boxes"]
    lines += [f"**`detect` boxes vs the given ones on unlabeled/** (IoU >= {b['iou']:g}, min score "
              f"{res['min_score']:g}, one box per object and image; the runs train on these crops)", "",
              "| object | given | detect | recall of given | precision of detect | mean best IoU |",
              "|---|---:|---:|---:|---:|---:|"]
    for k, v in b["objects"].items():
        lines.append(f"| {'run objects' if k == 'all' else k} | {v['given']} | {v['detect']} | {v['recall']:.1f} "
                     f"| {v['precision']:.1f} | {v['mean_best_iou']:.2f} |")
    secs = res["seconds"]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="default")
    ap.add_argument("--lmo", default=str(LMO_DEFAULT), help="the lmo-real folder (its README)")
    ap.add_argument("--detector", default=str(DETECTOR_DEFAULT),
                    help="detector checkpoint for the eight LM-O objects (benchmarks/detector.py --targets lmo)")
    ap.add_argument("--objects", default="1,5,8", help="comma list of LM-O object ids (default: ape, can, driller)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_selfsup_lmo_boxes"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (each of --jobs runs gets a share)")
    ap.add_argument("--jobs", type=int, default=2, help="self-supervised runs at once")
    ap.add_argument("--min-score", type=float, default=None, help="detect's score floor (default: the mode's)")
    ap.add_argument("--mode-set", dest="mode_overrides", action="append", default=[], metavar="KEY=INT",
                    help="override one of the mode's integer settings, e.g. ss_steps=200")
    ap.add_argument("--fresh", action="store_true", help="delete the mode's run folder first")
    a = ap.parse_args(argv)
    m = dict(MODES[a.mode])
    for kv in a.mode_overrides:
        k, _, v = kv.partition("=")
        if k not in m or not v.lstrip("-").isdigit():
            raise SystemExit(f"--mode-set: expected KEY=INT with KEY in {sorted(m)}, got {kv!r}")
        m[k] = int(v)
    if a.min_score is not None:
        m["min_score"] = a.min_score
    lmo, detector = Path(a.lmo), Path(a.detector)
    info = lmo / "models" / "models_info.json"
    if not info.is_file():
        raise SystemExit(f"selfsup_lmo_boxes: {info} not found (--lmo PATH: the lmo-real folder)")
    if not detector.is_file():
        raise SystemExit(f"selfsup_lmo_boxes: detector checkpoint {detector} not found: train it with "
                         "`python benchmarks/detector.py --targets lmo`, or pass --detector PATH")
    objects = [int(o) for o in a.objects.split(",") if o.strip()]
    unknown = sorted(set(objects) - set(LMO_NAMES))
    if unknown:
        raise SystemExit(f"--objects {unknown}: not LM-O objects ({sorted(LMO_NAMES)})")
    out = Path(a.out) / a.mode
    if a.fresh and out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    from pose6d_ros.registry import ObjectRegistry

    registry = out / "objects.yaml"  # all eight objects: the detector's classes; meshes stay in <lmo>/models
    ObjectRegistry.from_bop_models_info(info).to_yaml(registry)
    given = lmo / "unlabeled" / "detections_bop.json"
    res: Dict[str, Any] = {"mode": a.mode, "config": m, "objects": objects, "lmo": str(lmo), "detector": str(detector),
                           "min_score": m["min_score"], "seconds": {},
                           "steps": {"synthetic": m["syn_steps"], "selfsup": m["ss_steps"]}}
    t0 = time.time()
    dets = run_detect(detector, registry, lmo / "unlabeled", out / "detections_detect.json", m["min_score"],
                      a.threads)
    res["seconds"]["detect"] = time.time() - t0
    res["detections"] = {"given": str(given), "detect": str(dets)}
    res["boxes"] = compare_boxes(given, dets, objects)
    res["boxes"]["objects"]["all eight"] = compare_boxes(given, dets, sorted(LMO_NAMES))["objects"]["all"]
    b = res["boxes"]["objects"]["all"]
    print(f"[selfsup_lmo_boxes] detect boxes: recall of the given boxes {b['recall']:.1f}% at IoU 0.5, "
          f"precision {b['precision']:.1f}% ({b['detect']} detect vs {b['given']} given boxes)", flush=True)
    if b["detect"] == 0:
        raise SystemExit(f"selfsup_lmo_boxes: detect found none of objects {objects} on {lmo / 'unlabeled'} at "
                         f"score >= {m['min_score']} (see {dets.with_suffix('.log')}): run (b) has no crops")

    per_job = max(1, a.threads // max(1, a.jobs))
    cache = out / "cache"
    t0 = time.time()
    syn_model = train_synthetic(recipe(m, out, lmo, registry, objects, given, cache, a.threads))
    res["seconds"]["synthetic"] = time.time() - t0
    cfgs = [merge(recipe(m, out / f"selfsup_{r}", lmo, registry, objects, p, cache, per_job),
                  {"init": {"checkpoint": str(syn_model)}}) for r, p in (("given", given), ("detect", dets))]
    t0 = time.time()
    models = dict(zip(RUNS, _pool(a.jobs, train_selfsup, cfgs)))
    res["seconds"]["selfsup (both)"] = time.time() - t0

    t0 = time.time()
    res["eval"] = {}
    for v in VISIB:
        ev = {"synthetic": evaluate(syn_model, lmo / "val", registry, objects, v)}
        ev.update({r: evaluate(Path(p), lmo / "val", registry, objects, v) for r, p in models.items()})
        diff_rows = {k: {mt: ev["detect"]["rows"][k][mt] - ev["given"]["rows"][k][mt] for mt in METRICS}
                     for k in ev["given"]["rows"]}
        diff_med = {k: {e: ev["detect"]["median_errors"][k][e] - ev["given"]["median_errors"][k][e]
                        for e in ("ADD/d", "proj px")} for k in ev["given"]["median_errors"]}
        ev["difference"] = {"rows": diff_rows, "median_errors": diff_med,
                            "mean": {mt: ev["detect"]["mean"][mt] - ev["given"]["mean"][mt] for mt in METRICS}}
        res["eval"][f"visib>={v:g}"] = ev
    res["seconds"]["evaluate"] = time.time() - t0
    text = markdown(res)
    print(text, flush=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
