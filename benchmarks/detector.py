"""The 2D detector on simulated and real images (issue 13): train with the default recipe, then box
recall and average precision, and latency per frame.

    .venv/bin/python benchmarks/detector.py                  # both targets (<= 60 min on 2 cores)
    .venv/bin/python benchmarks/detector.py --targets lmo    # only the real LM-O images
    .venv/bin/python benchmarks/detector.py --mode smoke     # a few steps of everything (minutes)

Targets (``--targets``, comma list):

- ``lm-lite``: a detector for the suite's objects, trained by ``train_detector`` on synthetic scenes
  (``training/detector_lm_lite.yaml``), scored on the **simulated real** test split of lm-lite (built
  under ``--data`` when absent; pyrender frames over photos with clutter and camera effects: a renderer
  the detector never trained on).
- ``lmo``: a detector for the eight LM-O objects (registry from the dataset's ``models_info.json``,
  meshes read in place), trained the same way, scored on the **real** images of
  ``<lmo>/val`` (20 labelled images), counting objects >= 30% visible, then all objects; ``detect``
  also writes its boxes for ``<lmo>/unlabeled`` in the BOP format, and they are compared with the
  dataset's own boxes there (``detections_bop.json``).

Each target reports recall at IoU 0.5 and 0.75 against the visible GT boxes (some detection of the
object's class with score >= ``--min-score``), AP at IoU 0.5 / 0.75 and mAP over IoU 0.5:0.95 (COCO
rules; less visible instances are ignored, not false positives), per object and mean, and the mean
detector time per 640x480 frame on this machine's CPU. A finished training is reused by a later call
(``--fresh`` retrains); an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
#: beside the checkout (as on the development machines), else /work/shared
LMO_DEFAULT = next((p for p in (ROOT.parent / "shared" / "data" / "lmo-real", Path("/work/shared/data/lmo-real"))
                    if p.is_dir()), ROOT.parent / "shared" / "data" / "lmo-real")

MODES: Dict[str, Dict[str, Any]] = {
    # lm-lite objects and images per object of the simulated real suite; training steps (None: the recipe's)
    "default": dict(lm_objects=[1, 2, 5, 6], images_per_object=60, steps=None, eval_limit=0),
    "smoke": dict(lm_objects=[1, 2], images_per_object=6, steps=4, eval_limit=4),
}
TARGET_VISIB = {"lm-lite": (0.1,), "lmo": (0.3, 0.0)}


def _run(cmd: Sequence[str], log: Path) -> None:
    """A project CLI in a child process; its output goes to ``log``, its last lines to the console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(list(cmd), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-2:]
    print(f"  [{time.time() - t0:.0f} s] {' '.join(cmd[2:5])} ... -> exit {code}; " + " | ".join(tail), flush=True)
    if code != 0:
        raise SystemExit(f"detector benchmark: {' '.join(cmd)} exited with {code} (log: {log})")


def _py(module: str, *args: Any) -> List[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def train(registry_yaml: Path, out: Path, recipe: Path, steps: Optional[int], threads: int, device: str) -> Path:
    """``train_detector`` with the recipe (resumes an unfinished run); returns the checkpoint."""
    ckpt = out / "detector.pt"
    result = out / "detector.result.json"
    if result.is_file() and ckpt.is_file():
        print(f"  reusing {ckpt}", flush=True)
        return ckpt
    cmd = _py("pose6d_ros.detection.train", "--recipe", recipe, "--objects", registry_yaml, "--out", ckpt,
              "--threads", threads, "--device", device, "--resume")
    if steps is not None:
        cmd += ["--steps", str(steps)]
    t0 = time.time()
    _run(cmd, out / "train.log")
    (out / "train_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return ckpt


def score(ckpt: Path, registry_yaml: Path, split: Path, min_visib: Sequence[float], min_score: float,
          limit: int, out: Path, threads: int, device: str) -> Dict[str, Any]:
    """``detect`` over ``split`` (BOP detections file), then recall and AP of that file per visibility floor."""
    from pose6d_ros.data.bop import load_detections
    from pose6d_ros.detection.infer import evaluate_detections
    from pose6d_ros.registry import ObjectRegistry

    dets_path = out / f"detections_{split.parent.name}_{split.name}.json"
    cmd = _py("pose6d_ros.detection.detect", "--model", ckpt, "--objects", registry_yaml, "--split", split,
              "--out", dets_path, "--min-score", "0.01", "--threads", threads, "--device", device,
              "--no-progress")
    if limit:
        cmd += ["--limit", str(limit)]
    _run(cmd, out / "detect.log")
    dets = load_detections(dets_path)
    ids = ObjectRegistry.from_yaml(registry_yaml).ids
    images = sorted({(d.scene_id, d.im_id) for d in dets}) if limit else None
    rows = {}
    for v in min_visib:
        rep = evaluate_detections(dets, split, ids, min_visib_fract=v, min_score=min_score, images=images)
        print(rep.summary(), flush=True)
        rows[f"visib>={v:g}"] = rep.to_dict()
    per_image = {(d.scene_id, d.im_id): d.time for d in dets}
    return {"split": str(split), "detections": str(dets_path), "rows": rows, "n_images": len(per_image),
            "ms_per_frame": 1000 * float(sum(per_image.values())) / max(1, len(per_image))}


def _subset_registry(src: Path, ids: Sequence[int], dst: Path) -> Path:
    from pose6d_ros.registry import ObjectRegistry

    reg = ObjectRegistry.from_yaml(src)
    ObjectRegistry([reg.get(i) for i in ids], source=str(src)).to_yaml(dst)
    return dst


def report(results: Dict[str, Any]) -> str:
    """Markdown tables of a ``results.json``: one row per target and visibility floor, then per object."""
    def pct(x: float) -> str:
        return "–" if x != x else f"{100 * x:.1f}"

    lines = ["| target | counted GT | recall@0.5 | recall@0.75 | AP50 | AP75 | mAP 0.5:0.95 | ms / 640×480 frame |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    per_object = ["| target | object | counted GT | recall@0.5 | recall@0.75 | AP50 | mAP |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, res in results["targets"].items():
        for floor, r in res["rows"].items():
            lines.append(f"| {name}, {floor} | {r['n_gt']} | {pct(r['recall50'])} | {pct(r['recall75'])} | "
                         f"{pct(r['AP50'])} | {pct(r['AP75'])} | {pct(r['mAP'])} | {res['ms_per_frame']:.0f} |")
            for oid, c in r["classes"].items():
                if c["n_gt"]:
                    per_object.append(f"| {name}, {floor} | {oid} | {c['n_gt']} | {pct(c['recall50'])} | "
                                      f"{pct(c['recall75'])} | {pct(c['AP50'])} | {pct(c['AP'])} |")
    return "\n".join(lines) + "\n\n" + "\n".join(per_object) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="default")
    ap.add_argument("--targets", default="lm-lite,lmo")
    ap.add_argument("--recipe", default=str(ROOT / "training" / "detector_lm_lite.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data"), help="where the lm-lite suite is built")
    ap.add_argument("--lmo", default=str(LMO_DEFAULT), help="the lmo-real folder (its README)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_detector"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-score", type=float, default=0.3, help="score from which a detection counts for recall")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: training and detect")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--report", action="store_true", help="only print the tables of the last run's results.json")
    args = ap.parse_args(argv)
    m = MODES[args.mode]
    out = Path(args.out) / args.mode
    if args.report:
        print(report(json.loads((out / "results.json").read_text())))
        return 0
    if args.fresh and out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    info = Path(args.lmo) / "models" / "models_info.json"
    if "lmo" in targets and not info.is_file():  # before hours of training, not after
        raise SystemExit(f"detector benchmark: {info} not found (--lmo PATH: the lmo-real folder)")
    results: Dict[str, Any] = {"mode": args.mode, "recipe": args.recipe, "threads": args.threads, "targets": {}}
    if (out / "results.json").is_file():  # a call for some targets keeps the others' last results
        results["targets"] = json.loads((out / "results.json").read_text()).get("targets", {})
    t_all = time.time()
    if "lm-lite" in targets:
        print("== lm-lite: simulated real test split", flush=True)
        suite = Path(args.data) / f"lm-lite-det-{args.mode}"
        if not (suite / "build_info.json").is_file():
            _run(_py("pose6d_ros.data.build", "--suite", "lm-lite", "--out", suite, "--images-per-object",
                     m["images_per_object"], "--train-fraction", "0.1", "--objects", *m["lm_objects"]),
                 out / "lm-lite" / "build.log")
        reg = _subset_registry(suite / "objects.yaml", m["lm_objects"], out / "lm-lite" / "objects.yaml")
        t0 = time.time()
        ckpt = train(reg, out / "lm-lite", Path(args.recipe), m["steps"], args.threads, args.device)
        res = score(ckpt, reg, suite / "test", TARGET_VISIB["lm-lite"], args.min_score, m["eval_limit"],
                    out / "lm-lite", args.threads, args.device)
        res["seconds"] = time.time() - t0
        results["targets"]["lm-lite"] = res
    if "lmo" in targets:
        print("== lmo: real LM-O val images", flush=True)
        lmo = Path(args.lmo)
        from pose6d_ros.registry import ObjectRegistry
        reg = out / "lmo" / "objects.yaml"
        reg.parent.mkdir(parents=True, exist_ok=True)
        ObjectRegistry.from_bop_models_info(info).to_yaml(reg)
        t0 = time.time()
        ckpt = train(reg, out / "lmo", Path(args.recipe), m["steps"], args.threads, args.device)
        res = score(ckpt, reg, lmo / "val", TARGET_VISIB["lmo"], args.min_score, m["eval_limit"], out / "lmo",
                    args.threads, args.device)
        res["seconds"] = time.time() - t0
        results["targets"]["lmo"] = res
    results["seconds"] = time.time() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report(results))
    print(report(results))
    print(f"{out / 'results.md'}, {out / 'results.json'} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
