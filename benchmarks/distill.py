"""One network for many objects: the paper's Table 2, Fig. 3 and Table 7 analogues, and the combined
solution on real images (Sec. 3.3-3.4, 4.3-4.4; issue 14).

    .venv/bin/python benchmarks/distill.py --quick --jobs 2            # target: <= 60 min on 2 cores
    .venv/bin/python benchmarks/distill.py --mode full --jobs 2        # 13 + 30 objects, paper-sized (GPU)
    .venv/bin/python benchmarks/distill.py --mode smoke                # a few steps of everything (minutes)
    .venv/bin/python benchmarks/distill.py --quick --stages table2 --mode-set student_steps=300

Every network is trained by the project's own trainers (``train_supervised``, ``train_selfsup``,
``distill``) from the recipes in ``training/``, with the mode's steps and objects on top. A stage's
finished runs are reused by a later call (their ``model.pt`` and ``eval-*.json``), so a killed
benchmark continues where it stopped (an unfinished run resumes from its checkpoint); a run folder
trained with other settings is refused (``--fresh`` removes the mode's folder first, or give another
``--out``). ``results.md`` / ``results.json`` hold the stages of the last call.

Stages (``--stages``, comma list; each needs the ones before it, trained here when missing):

- ``suites``: the simulated real suites, built under ``--data`` when absent (``lm-lite``,
  ``tless-lite``; the mode's objects and images per object).
- ``table2`` (lm-lite): one self-supervised teacher per object (synthetic init, then ``train_selfsup``
  on the unlabeled train/ crops: Sec. 3.4), then six students on all the mode's objects, from the
  same teachers and data: Multi, CIN (``distill.loss: gt``: synthetic labels only), Multi+KD*,
  CIN+KD* (``kd_star``), Multi+KD*+HT, CIN+KD*+HT (``kd_star`` + hint). Reported: ADD(-S) and
  2D-projection means on test/, parameters, and the share of the teachers' ADD(-S) kept.
- ``fig3`` (lm-lite): accuracy relative to the teachers against the number of objects (the first
  ``counts`` of the mode's objects) for Multi, CIN, Multi+KD*+HT and CIN+KD*+HT; ``fig3.png``.
- ``table7`` (tless-lite): the mode's objects split into 1, 2, 3, 6 students (contiguous groups, no
  overlap) of CIN+KD* and CIN+KD*+HT; ADD(-S) mean over all objects (the paper reports VSD) and the
  compression rate ``1 − students' parameters / teachers' parameters``.
- ``real`` (``--lmo``, the real LM-O images of ``../shared/data/lmo-real``): self-supervised
  teachers on ``unlabeled/`` (its boxes as detections), a CIN+KD*+HT student, both scored on
  ``val/`` (every labelled object of each image; never trained on).

Targets (issue 14): CIN+KD*+HT keeps >= 75% of the teachers' mean ADD(-S) (paper: 66%), scores >= 5
points above Multi+KD*, with >= 90% fewer parameters than the teachers together. ``results.md``
says where each is met or missed. The quick mode's budget is an estimate from step timings on 2
cores (MobileNetV3-small at 64 px: a distillation step at batch 16 + 16 about 0.3 s), not yet a
measured run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch._dynamo  # noqa: F401  (before OSMesa: see docs/architecture.md, "Known pitfall")
import torchvision.models  # noqa: F401

from pose6d_ros.training.config import load_config, merge

ROOT = Path(__file__).resolve().parents[1]
LMO_DEFAULT = ROOT.parent / "shared" / "data" / "lmo-real"

MODES: Dict[str, Dict[str, Any]] = {
    # objects, suite sizes, steps (teachers: synthetic init + self-supervised; students), Fig. 3 counts,
    # Table 7 student counts, test crops per object, trunk, synthetic pool per object, LM-O objects
    "smoke": dict(lm_objects=[1, 2], lm_images=16, tless_objects=[1, 2], tless_images=12, teacher_syn_steps=3,
                  teacher_ss_steps=2, student_steps=3, counts=[1, 2], t7_students=[1, 2], test_limit=4,
                  backbone="mobilenet_v3_small", syn_per_object=16, batch=4, lmo_objects=[1], appearance="standard"),
    "quick": dict(lm_objects=[1, 2, 5, 6], lm_images=80, tless_objects=[1, 2, 3, 4, 5, 6], tless_images=40,
                  teacher_syn_steps=600, teacher_ss_steps=150, student_steps=600, counts=[1, 2, 4],
                  t7_students=[1, 2, 3, 6], test_limit=50, backbone="mobilenet_v3_small", syn_per_object=400,
                  batch=16, lmo_objects=[1, 5, 8], appearance="standard"),
    "full": dict(lm_objects=list(range(1, 14)), lm_images=360, tless_objects=list(range(1, 31)), tless_images=120,
                 teacher_syn_steps=20000, teacher_ss_steps=6000, student_steps=20000, counts=[1, 3, 6, 13],
                 t7_students=[1, 2, 3, 6], test_limit=None, backbone="resnet18", syn_per_object=3000, batch=32,
                 lmo_objects=[1, 5, 6, 8, 9, 10, 11, 12], appearance="standard"),
}

#: Student rows: (model.conditioning, distill overrides).
VARIANTS: Dict[str, tuple] = {
    "Multi": ("multi", {"loss": "gt", "hint": False, "real": "none"}),
    "CIN": ("cin", {"loss": "gt", "hint": False, "real": "none"}),
    "Multi+KD*": ("multi", {"loss": "kd_star", "hint": False}),
    "CIN+KD*": ("cin", {"loss": "kd_star", "hint": False}),
    "Multi+KD*+HT": ("multi", {"loss": "kd_star", "hint": True}),
    "CIN+KD*+HT": ("cin", {"loss": "kd_star", "hint": True}),
}
TABLE2_ROWS = ("Multi", "Multi+KD*", "CIN", "CIN+KD*", "Multi+KD*+HT", "CIN+KD*+HT")
FIG3_ROWS = ("Multi", "CIN", "Multi+KD*+HT", "CIN+KD*+HT")
TABLE7_ROWS = ("CIN+KD*", "CIN+KD*+HT")
METRICS = ("ADD(-S)", "2D proj 5px")


# ---- one training or evaluation (in a worker process with --jobs) --------------------------------
def _train(kind: str, cfg: Dict[str, Any]) -> str:
    """Train (or continue) one run; returns its ``model.pt``. A finished run is not retrained."""
    from pose6d_ros.training import distill, selfsup, supervised

    torch.set_num_threads(1)
    out = Path(cfg["output_dir"])
    settings = json.dumps(cfg, sort_keys=True, default=str)
    stamp = out / "bench-config.json"
    if stamp.is_file() and stamp.read_text() != settings:
        raise SystemExit(f"{out} was trained with other settings: use --fresh or another --out")
    if not (out / "model.pt").is_file():
        out.mkdir(parents=True, exist_ok=True)
        stamp.write_text(settings)
        {"supervised": supervised.train, "selfsup": selfsup.train, "distill": distill.train}[kind](cfg, resume=True)
    if not (out / "model.pt").is_file():
        raise RuntimeError(f"{kind} run {out} finished without a model.pt")
    return str(out / "model.pt")


def evaluate_model(model_path: str, split: str, registry_path: str, objects: Sequence[int], targets_only: bool,
                   limit: Optional[int]) -> Dict[str, Any]:
    """ADD(-S) and 2D-projection recall of ``model_path`` on ``split`` (GT visible boxes), per object
    and mean, with the model card's parameters and MACs; cached in ``eval.json`` beside the model."""
    from pose6d_ros._io import atomic_write_text
    from pose6d_ros.evaluation.evaluate import predict_split, score_predictions
    from pose6d_ros.models import load_model
    from pose6d_ros.registry import ObjectRegistry
    from pose6d_ros.data.target_crops import TargetCrops, items_from_split
    from pose6d_ros.registry import RunObjects

    torch.set_num_threads(1)
    cache = Path(model_path).with_name(f"eval-{Path(split).name}-{limit}.json")
    if cache.is_file():
        return json.loads(cache.read_text())
    model, card = load_model(model_path)
    reg_path = Path(registry_path)
    registry = (ObjectRegistry.from_bop_models_info(reg_path) if reg_path.suffix == ".json"
                else ObjectRegistry.from_yaml(reg_path))
    items, kept = [], {}
    for it in items_from_split(split, list(objects), targets_only=targets_only):
        if limit is None or kept.get(it.obj_id, 0) < limit:  # the first `limit` of each object
            kept[it.obj_id] = kept.get(it.obj_id, 0) + 1
            items.append(it)
    crops = TargetCrops(split, items, RunObjects(registry, list(card.object_ids)), card.crop_size,
                        padding=card.crop_padding)
    preds = predict_split(model, crops, torch.from_numpy(card.keypoints_array).float())
    table = score_predictions(preds, registry)
    res = {"rows": table.rows, "mean": table.mean(), "counts": table.counts, "parameters": card.parameters,
           "macs_per_crop": card.macs_per_crop, "objects": list(card.object_ids)}
    atomic_write_text(cache, json.dumps(res, indent=1))
    return res


def _pool(jobs: int, fn: Callable, args: List[tuple]) -> List[Any]:
    if jobs <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(args)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*args)))


# ---- configs -------------------------------------------------------------------------------------
class Bench:
    """The mode's settings, folders and config builders."""

    def __init__(self, mode: str, out: Path, data: Path, jobs: int, overrides: Dict[str, int]) -> None:
        m = dict(MODES[mode])
        unknown = set(overrides) - set(m)
        if unknown:
            raise SystemExit(f"--mode-set: unknown key(s) {sorted(unknown)}; known: {sorted(m)}")
        m.update(overrides)
        self.m, self.mode, self.out, self.data, self.jobs = m, mode, out, data, jobs

    def base(self, root: Path, suite: str, objects: Sequence[int], out: Path, registry: Optional[str] = None,
             cache: Optional[Path] = None) -> Dict[str, Any]:
        m = self.m
        return {
            "seed": 0, "output_dir": str(out),
            "data": {"root": str(root), "suite": suite, "registry": registry, "objects": list(objects),
                     "crop_size": 64, "synthetic_per_object": m["syn_per_object"], "diag_per_object": 0,
                     "batch_size": m["batch"], "synthetic_batch_size": m["batch"],
                     # one pool cache per dataset: the cache's name holds the suite name and object ids only
                     "synthetic_cache_dir": str(cache or self.out / f"cache-{suite}")},
            "model": {"backbone": m["backbone"]},
            "log": {"progress": False, "tensorboard": True, "period": 50},
            "eval": {"final_test": False, "period": 0},
        }

    def teacher_cfgs(self, root: Path, suite: str, oid: int, tdir: Path, registry: Optional[str] = None):
        """(synthetic-init config, self-supervised config) of object ``oid``'s teacher."""
        m = self.m
        syn = merge(load_config(ROOT / "training/synthetic_lm_lite.yaml"),
                    merge(self.base(root, suite, [oid], tdir / "synthetic", registry),
                          {"optim": {"max_steps": m["teacher_syn_steps"],
                                     "lr_steps": [int(0.8 * m["teacher_syn_steps"])]},
                           "checkpoint": {"period": max(1, m["teacher_syn_steps"] // 4)}}))
        ss = merge(load_config(ROOT / "training/selfsup_lm_lite.yaml"),
                   merge(self.base(root, suite, [oid], tdir, registry),
                         {"init": {"checkpoint": str(tdir / "synthetic" / "model.pt"),
                                   "freeze_early_steps": m["teacher_ss_steps"] // 5},
                          "optim": {"max_steps": m["teacher_ss_steps"], "lr_steps": []},
                          "checkpoint": {"period": max(1, m["teacher_ss_steps"] // 4)}}))
        return syn, ss

    def student_cfg(self, root: Path, suite: str, objects: Sequence[int], variant: str, teachers: Dict[int, str],
                    sdir: Path, registry: Optional[str] = None) -> Dict[str, Any]:
        conditioning, dist = VARIANTS[variant]
        m = self.m
        return merge(load_config(ROOT / "training/distill_lm_lite.yaml"),
                     merge(self.base(root, suite, objects, sdir, registry),
                           {"model": {"conditioning": conditioning},
                            "optim": {"max_steps": m["student_steps"], "lr_steps": [int(0.8 * m["student_steps"])]},
                            "checkpoint": {"period": max(1, m["student_steps"] // 4)},
                            "distill": merge({"teachers": {int(k): v for k, v in teachers.items()}}, dist)}))


# ---- stages --------------------------------------------------------------------------------------
def build_suites(b: Bench) -> Dict[str, Path]:
    from pose6d_ros.data.build import build

    paths = {}
    for suite, objs, n in (("lm-lite", b.m["lm_objects"], b.m["lm_images"]),
                           ("tless-lite", b.m["tless_objects"], b.m["tless_images"])):
        p = b.data / f"{suite}-distill-{b.mode}"
        if not (p / "build_info.json").is_file():
            print(f"[distill] building {suite} objects {objs} ({n} images each) -> {p}", flush=True)
            build(suite, p, images_per_object=n, object_ids=objs, workers=2, appearance=b.m["appearance"],
                  log=lambda *a: None)
        paths[suite] = p
    return paths


def train_teachers(b: Bench, root: Path, suite: str, objects: Sequence[int], tdir: Path,
                   registry: Optional[str] = None) -> Dict[int, str]:
    """Self-supervised single-object teachers (synthetic init first), in parallel over objects."""
    cfgs = {o: b.teacher_cfgs(root, suite, o, tdir / str(o), registry) for o in objects}
    _pool(b.jobs, _train, [("supervised", cfgs[o][0]) for o in objects])
    paths = _pool(b.jobs, _train, [("selfsup", cfgs[o][1]) for o in objects])
    return dict(zip(objects, paths))


def _teacher_row(b: Bench, teachers: Dict[int, str], split: Path, registry: str, targets_only: bool = True):
    evals = _pool(b.jobs, evaluate_model, [(p, str(split), registry, [o], targets_only, b.m["test_limit"])
                                           for o, p in teachers.items()])
    rows = {name: r for e in evals for name, r in e["rows"].items()}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in METRICS}
    return {"rows": rows, "mean": mean, "parameters": sum(e["parameters"] for e in evals),
            "macs_per_crop": evals[0]["macs_per_crop"], "objects": list(teachers)}


def train_students(b: Bench, root: Path, suite: str, groups: Dict[str, tuple], teachers: Dict[int, str],
                   split: Path, registry: str) -> Dict[str, Any]:
    """``groups``: key -> (variant, objects, folder). Trains all, then evaluates all."""
    cfgs = {k: b.student_cfg(root, suite, objs, v, {o: teachers[o] for o in objs}, d)
            for k, (v, objs, d) in groups.items()}
    models = dict(zip(cfgs, _pool(b.jobs, _train, [("distill", c) for c in cfgs.values()])))
    evals = _pool(b.jobs, evaluate_model, [(models[k], str(split), registry, groups[k][1], True, b.m["test_limit"])
                                           for k in cfgs])
    return dict(zip(cfgs, evals))


def table2_and_fig3(b: Bench, suites: Dict[str, Path], stages: Sequence[str]) -> Dict[str, Any]:
    root = suites["lm-lite"]
    objs, reg = b.m["lm_objects"], str(root / "objects.yaml")
    out = b.out / "lm-lite"
    t0 = time.time()
    teachers = train_teachers(b, root, "lm-lite", objs, out / "teachers")
    res: Dict[str, Any] = {"teachers": _teacher_row(b, teachers, root / "test", reg), "seconds": {}}
    res["seconds"]["teachers"] = time.time() - t0
    groups = {}
    if "table2" in stages:
        groups.update({(v, len(objs)): (v, objs, out / f"students-{len(objs)}" / v.replace("*", "s"))
                       for v in TABLE2_ROWS})
    if "fig3" in stages:
        groups.update({(v, n): (v, objs[:n], out / f"students-{n}" / v.replace("*", "s"))
                       for n in b.m["counts"] for v in FIG3_ROWS})
    t0 = time.time()
    ev = train_students(b, root, "lm-lite", groups, teachers, root / "test", reg)
    res["seconds"]["students"] = time.time() - t0
    teacher_rows = res["teachers"]["rows"]

    def relative(e: Dict[str, Any]) -> float:  # the student's ADD(-S) mean over the teachers' on its objects
        names = list(e["rows"])
        t = sum(teacher_rows[n]["ADD(-S)"] for n in names) / len(names)
        return e["mean"]["ADD(-S)"] / t if t > 0 else float("nan")

    if "table2" in stages:
        res["table2"] = {v: {**ev[(v, len(objs))], "relative": relative(ev[(v, len(objs))])} for v in TABLE2_ROWS}
    if "fig3" in stages:
        res["fig3"] = {v: {n: relative(ev[(v, n)]) for n in b.m["counts"]} for v in FIG3_ROWS}
        plot_fig3(res["fig3"], b.out / "fig3.png")
    return res


def table7(b: Bench, suites: Dict[str, Path]) -> Dict[str, Any]:
    root = suites["tless-lite"]
    objs, reg = b.m["tless_objects"], str(root / "objects.yaml")
    out = b.out / "tless-lite"
    teachers = train_teachers(b, root, "tless-lite", objs, out / "teachers")
    trow = _teacher_row(b, teachers, root / "test", reg)
    groups = {}
    for s in b.m["t7_students"]:
        size = -(-len(objs) // s)
        parts = [objs[i:i + size] for i in range(0, len(objs), size)]
        for v in TABLE7_ROWS:
            for j, part in enumerate(parts):
                groups[(v, s, j)] = (v, part, out / f"{s}-students" / v.replace("*", "s") / str(j))
    ev = train_students(b, root, "tless-lite", groups, teachers, root / "test", reg)
    rows = {}
    for s in b.m["t7_students"]:
        for v in TABLE7_ROWS:
            parts = [e for (vv, ss, _), e in ev.items() if vv == v and ss == s]
            per_obj = {n: r for e in parts for n, r in e["rows"].items()}
            params = sum(e["parameters"] for e in parts)
            rows.setdefault(str(s), {})[v] = {
                "ADD(-S)": sum(r["ADD(-S)"] for r in per_obj.values()) / len(per_obj),
                "compression": 1.0 - params / trow["parameters"], "parameters": params}
    return {"teachers": trow, "rows": rows}


def lmo_view(lmo: Path, out: Path) -> Path:
    """The layout the trainers read (train/, train_detections.json, test/), as links into ``lmo``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, target in (("train", lmo / "unlabeled"), ("test", lmo / "val"), ("models", lmo / "models"),
                         ("train_detections.json", lmo / "unlabeled" / "detections_bop.json")):
        link = out / name
        if not link.exists():
            link.symlink_to(target.resolve())
    return out


def real_images(b: Bench, lmo: Path) -> Dict[str, Any]:
    """Sec. 3.4 on real images: self-supervised teachers on LM-O's unlabeled images, one CIN+KD*+HT
    student, both scored on val/ (every labelled object of the image, not only a scene's target)."""
    view = lmo_view(lmo, b.out / "lmo-view")
    reg = str(view / "models" / "models_info.json")
    objs = b.m["lmo_objects"]
    out = b.out / "lmo"
    cache = b.out / "cache-lmo"
    cfgs = {o: b.teacher_cfgs(view, "lmo", o, out / "teachers" / str(o), reg) for o in objs}
    for o in objs:  # the suite name keys the synthetic cache; the registry is the BOP models_info.json
        for c in cfgs[o]:
            c["data"]["synthetic_cache_dir"] = str(cache)
    _pool(b.jobs, _train, [("supervised", cfgs[o][0]) for o in objs])
    teachers = dict(zip(objs, _pool(b.jobs, _train, [("selfsup", cfgs[o][1]) for o in objs])))
    trow = _teacher_row(b, teachers, view / "test", reg, targets_only=False)
    cfg = b.student_cfg(view, "lmo", objs, "CIN+KD*+HT", teachers, out / "student", reg)
    cfg["data"]["synthetic_cache_dir"] = str(cache)
    model = _train("distill", cfg)
    student = evaluate_model(model, str(view / "test"), reg, objs, False, b.m["test_limit"])
    return {"teachers": trow, "student": student}


# ---- report --------------------------------------------------------------------------------------
def plot_fig3(fig: Dict[str, Dict[int, float]], path: Path) -> Path:
    """Accuracy relative to the teachers against the number of objects, one line per variant (PIL)."""
    from PIL import Image, ImageDraw

    W, H, L, R, T, B = 640, 420, 60, 170, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    counts = sorted({n for row in fig.values() for n in row})
    ymax = math.ceil(10 * max([1.0] + [v for row in fig.values() for v in row.values() if v == v])) / 10
    x = {n: L + (W - L - R) * (i / max(1, len(counts) - 1)) for i, n in enumerate(counts)}

    def y(v: float) -> float:
        return H - B - (H - T - B) * (v / ymax)

    d.line([(L, T), (L, H - B), (W - R, H - B)], fill="black")
    for k in range(0, 11, 2):
        v = ymax * k / 10
        d.line([(L - 4, y(v)), (L, y(v))], fill="black")
        d.text((8, y(v) - 6), f"{100 * v:.0f}%", fill="black")
    for n in counts:
        d.text((x[n] - 4, H - B + 8), str(n), fill="black")
    d.text(((W - R) / 2 - 40, H - 20), "number of objects", fill="black")
    d.text((L, 8), "ADD(-S) relative to the single-object teachers", fill="black")
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for i, (name, row) in enumerate(fig.items()):
        pts = [(x[n], y(row[n])) for n in counts if n in row and row[n] == row[n]]
        c = colours[i % len(colours)]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for px, py in pts:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
        d.line([(W - R + 10, T + 20 * i + 6), (W - R + 30, T + 20 * i + 6)], fill=c, width=2)
        d.text((W - R + 36, T + 20 * i), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def markdown(res: Dict[str, Any]) -> str:
    lines: List[str] = [f"Mode `{res['mode']}`: {json.dumps(res['config'])}", ""]
    t2 = res.get("lm", {}).get("table2")
    if t2:
        teach = res["lm"]["teachers"]
        lines += [f"**Table 2 analogue** (lm-lite, {len(teach['objects'])} objects; ADD(-S) and 2D projection at "
                  "5 px, % on test/)", "",
                  "| method | ADD(-S) | 2D proj | parameters | of the teachers' ADD(-S) |", "|---|---:|---:|---:|---:|"]
        rows = [("Single (teachers)", teach, 1.0)] + [(v, t2[v], t2[v]["relative"]) for v in TABLE2_ROWS]
        for name, e, rel in rows:
            lines.append(f"| {name} | {e['mean']['ADD(-S)']:.1f} | {e['mean']['2D proj 5px']:.1f} | "
                         f"{e['parameters']:,} | {100 * rel:.0f}% |")
        best, multi = t2["CIN+KD*+HT"], t2["Multi+KD*"]
        cut = 1 - best["parameters"] / teach["parameters"]
        gap = best["mean"]["ADD(-S)"] - multi["mean"]["ADD(-S)"]
        lines += ["", "Targets: CIN+KD*+HT keeps " + f"{100 * best['relative']:.0f}% of the teachers' ADD(-S) (>= 75%: "
                  f"{'met' if best['relative'] >= 0.75 else 'missed'}); {gap:+.1f} points over Multi+KD* (>= +5: "
                  f"{'met' if gap >= 5 else 'missed'}); {100 * cut:.1f}% fewer parameters than the teachers "
                  f"(>= 90%: {'met' if cut >= 0.9 else 'missed'})."]
        names = list(teach["rows"])
        lines += ["", "| object | " + " | ".join(["Single", *TABLE2_ROWS]) + " |",
                  "|---|" + "---:|" * (len(TABLE2_ROWS) + 1)]
        for n in names:
            vals = [teach["rows"][n]["ADD(-S)"]] + [t2[v]["rows"][n]["ADD(-S)"] for v in TABLE2_ROWS]
            lines.append(f"| {n} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    f3 = res.get("lm", {}).get("fig3")
    if f3:
        counts = sorted({int(n) for row in f3.values() for n in row})
        lines += ["", "**Fig. 3 analogue** (ADD(-S) relative to the teachers; `fig3.png`)", "",
                  "| method | " + " | ".join(f"{n} obj." for n in counts) + " |", "|---|" + "---:|" * len(counts)]
        for v, row in f3.items():
            lines.append(f"| {v} | " + " | ".join(f"{100 * row[n]:.0f}%" for n in counts) + " |")
    t7 = res.get("tless")
    if t7:
        n = len(t7["teachers"]["objects"])
        lines += ["", f"**Table 7 analogue** (tless-lite, {n} objects; ADD(-S) mean %, the paper reports VSD)", "",
                  "| students | compression | " + " | ".join(TABLE7_ROWS) + " |",
                  "|---|---:|" + "---:|" * len(TABLE7_ROWS)]
        for s, row in t7["rows"].items():
            comp = row[TABLE7_ROWS[0]]["compression"]
            lines.append(f"| {s} ({-(-n // int(s))} objects each) | {100 * comp:.0f}% | "
                         + " | ".join(f"{row[v]['ADD(-S)']:.1f}" for v in TABLE7_ROWS) + " |")
        lines.append(f"| teachers ({n}) | 0% | {t7['teachers']['mean']['ADD(-S)']:.1f} | |")
    real = res.get("real")
    if real:
        lines += ["", "**Combined solution on real images** (LM-O val/, ADD(-S) %)", "",
                  "| object | self-supervised teachers | CIN+KD*+HT student |", "|---|---:|---:|"]
        for n in real["teachers"]["rows"]:
            lines.append(f"| {n} | {real['teachers']['rows'][n]['ADD(-S)']:.1f} | "
                         f"{real['student']['rows'].get(n, {}).get('ADD(-S)', float('nan')):.1f} |")
        lines.append(f"| **mean** | {real['teachers']['mean']['ADD(-S)']:.1f} | "
                     f"{real['student']['mean']['ADD(-S)']:.1f} |")
    lines += ["", "Seconds: " + json.dumps(res.get("seconds", {}))]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default=None)
    ap.add_argument("--quick", action="store_true", help="--mode quick")
    ap.add_argument("--stages", default="suites,table2,fig3,table7,real")
    ap.add_argument("--data", default=str(ROOT / "data"), help="where the suites are (built when absent)")
    ap.add_argument("--lmo", default=str(LMO_DEFAULT), help="the real LM-O images (stage 'real'; skipped when absent)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_distill"))
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once (one torch thread each)")
    ap.add_argument("--mode-set", dest="mode_overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one of the mode's settings, e.g. student_steps=300 or lm_objects=[1,2]")
    ap.add_argument("--fresh", action="store_true", help="delete the mode's output folder first")
    a = ap.parse_args(argv)
    mode = "quick" if a.quick else a.mode
    if mode is None:
        ap.error("give --quick or --mode")
    from pose6d_ros.training.config import apply_overrides

    try:
        over = apply_overrides({}, a.mode_overrides)
    except ValueError as e:
        raise SystemExit(f"--mode-set: {e}") from None
    out = Path(a.out) / mode
    if a.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    b = Bench(mode, out, Path(a.data), a.jobs, over)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = set(stages) - {"suites", "table2", "fig3", "table7", "real"}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}")
    res: Dict[str, Any] = {"mode": mode, "config": b.m, "seconds": {}}
    t0 = time.time()
    suites = build_suites(b) if {"suites", "table2", "fig3", "table7"} & set(stages) else {}
    res["seconds"]["suites"] = time.time() - t0
    if {"table2", "fig3"} & set(stages):
        t0 = time.time()
        res["lm"] = table2_and_fig3(b, suites, stages)
        res["seconds"]["lm-lite"] = time.time() - t0
    if "table7" in stages:
        t0 = time.time()
        res["tless"] = table7(b, suites)
        res["seconds"]["tless-lite"] = time.time() - t0
    if "real" in stages:
        if Path(a.lmo).is_dir():
            t0 = time.time()
            res["real"] = real_images(b, Path(a.lmo))
            res["seconds"]["real"] = time.time() - t0
        else:
            print(f"[distill] {a.lmo} not found: stage 'real' skipped", flush=True)
    text = markdown(res)
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
