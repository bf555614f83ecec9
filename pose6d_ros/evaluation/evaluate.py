"""Evaluate Φ on a BOP split: ADD(-S) recall, 2D projection recall, tables, BOP results CSV.

Protocol (Sec. 4): GT visible boxes (``bbox_visib`` of ``scene_gt_info.json``, what a perfect
detector gives) isolate pose quality (as the paper's Table 5); in scene ``k`` only the target object
``k`` is evaluated (LINEMOD protocol). A pose is correct under ADD when the mean model-point distance is below 10% of
the diameter (ADD-S, closest point, for symmetric objects), and under 2D projection when the mean
reprojection error of the model points is below 5 px.

    evaluate --model runs/x/model.pt --split data/lm-lite/test --registry data/lm-lite/objects.yaml [--plots DIR]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from pose6d_ros._checks import InputError, reading, run_cli
from pose6d_ros._io import atomic_write_json, atomic_write_text
from pose6d_ros.data.target_crops import TargetCrops, first_per_object, items_from_split
from pose6d_ros.evaluation.plots import ObjectErrors, write_plots
from pose6d_ros.evaluation.tables import (
    BopEstimate,
    RecallTable,
    format_csv,
    format_markdown,
    recall_table,
    save_bop_results,
)
from pose6d_ros.geometry import metrics
from pose6d_ros.geometry.camera import normalized_to_pixels
from pose6d_ros.geometry.pnp import solve_pnp
from pose6d_ros.models import load_model
from pose6d_ros.registry import ObjectInfo, ObjectRegistry, RunObjects

__all__ = ["InstancePrediction", "predict_split", "score_poses", "score_predictions", "object_errors", "predict_crops",
           "diagnostic_eval", "main"]

log = logging.getLogger("pose6d_ros.evaluation")

ADD_THRESHOLD = 0.1  # fraction of the diameter
PROJ_THRESHOLD_PX = 5.0
METRICS = ("ADD(-S)", "2D proj 5px")
#: model vertices the errors are averaged over (a fixed subsample; ADD-S searches all of them)
MAX_POINTS = 1000


@dataclass
class InstancePrediction:
    """One evaluated GT instance (metres)."""

    scene_id: int
    im_id: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    R_gt: np.ndarray
    t_gt: np.ndarray
    K: np.ndarray  # full-image intrinsics
    failed: bool
    time: float


@torch.no_grad()
def predict_crops(model: torch.nn.Module, images: torch.Tensor, K_crop: torch.Tensor,
                  object_index: torch.Tensor, keypoints_3d: torch.Tensor):
    """Φ then PnP on a batch of crops.

    Args:
        model: Φ, ``(B, 3, S, S), (B,) -> (B, K, 2)`` normalised keypoints.
        images: ``(B, 3, S, S)`` crops.
        K_crop: ``(B, 3, 3)``.
        object_index: ``(B,)``.
        keypoints_3d: ``(N_obj, K, 3)`` metres.

    Returns:
        ``(PnPResult, keypoints (B, K, 2) normalised)``.
    """
    S = images.shape[-1]
    h = model(images, object_index).float()
    uv = normalized_to_pixels(h, S)
    kp3 = keypoints_3d.to(uv)[object_index]
    return solve_pnp(uv, kp3, K_crop.float()), h


def predict_split(model: torch.nn.Module, crops: TargetCrops, keypoints_3d: torch.Tensor, batch_size: int = 32,
                  device: torch.device | str = "cpu") -> List[InstancePrediction]:
    """Predict every item of a labelled :class:`pose6d_ros.data.target_crops.TargetCrops` (no jitter);
    to evaluate fewer, pass fewer items (:func:`pose6d_ros.data.target_crops.first_per_object`)."""
    model = model.eval().to(device)
    n = len(crops)
    out: List[InstancePrediction] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        b = crops.batch(idx, jitter=False)
        if "R" not in b:
            raise ValueError("predict_split: the split has no labels")
        t0 = time.perf_counter()
        pnp, _ = predict_crops(model, b["image"].to(device), b["K"].to(device), b["object_index"].to(device),
                               keypoints_3d.to(device))
        dt = (time.perf_counter() - t0) / len(idx)
        for i in range(len(idx)):
            sid, iid, oid = (int(v) for v in b["ids"][i])
            out.append(InstancePrediction(
                scene_id=sid, im_id=iid, obj_id=oid,
                R=pnp.R[i].cpu().double().numpy(), t=pnp.t[i].cpu().double().numpy(),
                R_gt=b["R"][i].double().numpy(), t_gt=b["t"][i].double().numpy(),
                K=b["K_full"][i].double().numpy(), failed=bool(pnp.failed[i]), time=dt))
    return out


def score_poses(info: ObjectInfo, R: torch.Tensor, t: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor, K: torch.Tensor,
                failed: torch.Tensor, max_points: int = MAX_POINTS) -> Dict[str, torch.Tensor]:
    """Which of ``B`` poses of ONE object are correct: the one scoring rule of ``evaluate``, the
    trainers' final test and their diagnostics.

    Args:
        info: the object's registry record (``model_vertices()``, ``diameter``, ``is_symmetric``).
        R, R_gt: ``(B, 3, 3)``; t, t_gt: ``(B, 3)`` metres.
        K: ``(B, 3, 3)`` full-image intrinsics (the 2D projection error is in image pixels).
        failed: ``(B,)`` bool; a failed estimate is never correct.
        max_points: the errors are averaged over a fixed (seeded) subsample of at most this many
            model vertices; ADD-S still searches the nearest neighbour among ALL vertices.

    Returns:
        ``{"ADD(-S)": (B,) bool, "2D proj 5px": (B,) bool, "add_error": (B,) metres,
        "proj_error": (B,) pixels}``.
    """
    verts = torch.as_tensor(np.asarray(info.model_vertices(), dtype=np.float64))
    query = verts
    if len(verts) > max_points:
        query = verts[torch.from_numpy(np.random.default_rng(0).choice(len(verts), max_points, replace=False))]
    R, t, R_gt, t_gt, K = (x.detach().cpu().double() for x in (R, t, R_gt, t_gt, K))
    failed = failed.detach().cpu().bool()
    if info.is_symmetric:
        e_add = metrics.adi(R, t, R_gt, t_gt, verts, query=query)
    else:
        e_add = metrics.add(R, t, R_gt, t_gt, query)
    e_proj = metrics.proj_error(R, t, R_gt, t_gt, K, query)
    return {"ADD(-S)": (e_add < ADD_THRESHOLD * info.diameter) & ~failed,
            "2D proj 5px": (e_proj < PROJ_THRESHOLD_PX) & ~failed, "add_error": e_add, "proj_error": e_proj}


def score_predictions(preds: Sequence[InstancePrediction], registry: ObjectRegistry, names: Optional[Dict[int, str]] = None,
                      max_points: int = MAX_POINTS) -> RecallTable:
    """ADD(-S) at 10% of the diameter and 2D projection at 5 px, per object (:func:`score_poses`)."""
    flags: Dict[str, Dict[str, List[bool]]] = {}
    for obj_id, ps, stack in _stacked_by_object(preds):
        info = registry.get(obj_id)
        ok = score_poses(info, *stack, max_points=max_points)
        name = (names or {}).get(obj_id, info.name)
        flags[name] = {m: ok[m].tolist() for m in METRICS}
    return recall_table(flags, list(METRICS))


def _stacked_by_object(preds: Sequence[InstancePrediction]):
    """``(obj_id, predictions, (R, t, R_gt, t_gt, K, failed) tensors)`` per object, ascending id."""
    by_obj: Dict[int, List[InstancePrediction]] = {}
    for p in preds:
        by_obj.setdefault(p.obj_id, []).append(p)
    for obj_id in sorted(by_obj):
        ps = by_obj[obj_id]
        stack = [torch.from_numpy(np.stack([getattr(p, k) for p in ps])) for k in ("R", "t", "R_gt", "t_gt", "K")]
        yield obj_id, ps, (*stack, torch.tensor([p.failed for p in ps]))


def object_errors(preds: Sequence[InstancePrediction], registry: ObjectRegistry) -> Dict[str, ObjectErrors]:
    """Per-instance errors of the predictions (ADD(-S) and 2D projection as :func:`score_poses` scores them,
    rotation and translation errors), per object name in ascending id order: what ``--plots`` draws
    (:func:`pose6d_ros.evaluation.plots.write_plots`)."""
    out: Dict[str, ObjectErrors] = {}
    for obj_id, ps, (R, t, R_gt, t_gt, K, failed) in _stacked_by_object(preds):
        info = registry.get(obj_id)
        s = score_poses(info, R, t, R_gt, t_gt, K, failed)
        out[info.name] = ObjectErrors(
            name=info.name, diameter=float(info.diameter), symmetric=bool(info.is_symmetric),
            keys=np.array([(p.scene_id, p.im_id) for p in ps], dtype=np.int64).reshape(-1, 2),
            add=s["add_error"].numpy(), proj=s["proj_error"].numpy(), rot=metrics.re(R, R_gt).double().numpy(),
            trans=metrics.te(t, t_gt).double().numpy(), failed=failed.numpy())
    return out


@torch.no_grad()
def diagnostic_eval(model: torch.nn.Module, data: Dict[str, torch.Tensor], objects: RunObjects,
                    batch_size: int = 64) -> Dict[str, float]:
    """Keypoint error (crop px) and ADD(-S) / 2D-projection recall on a labelled target batch
    (:meth:`pose6d_ros.data.target_crops.TargetCrops.batch`), scored as ``evaluate`` scores (:func:`score_poses`).

    Logged during training to watch drift; it never feeds a loss nor picks checkpoints.
    """
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


def write_outputs(table: RecallTable, preds: Sequence[InstancePrediction], out_dir: str | Path,
                  title: str = "Pose recall (%)", method: str = "pose6d", dataset: str = "lm-lite",
                  split: str = "test") -> Dict[str, Path]:
    """``results.md``, ``results.csv`` and the BOP CSV ``<method>_<dataset>-<split>.csv`` (BOP's naming;
    ``method`` must not contain ``_``)."""
    out_dir = Path(out_dir)
    md, csv_ = out_dir / "results.md", out_dir / "results.csv"
    atomic_write_text(md, format_markdown(table, title))
    atomic_write_text(csv_, format_csv(table))
    bop = save_bop_results(out_dir / f"{method.replace('_', '-')}_{dataset}-{split}.csv", [
        BopEstimate(p.scene_id, p.im_id, p.obj_id, 1.0, p.R, p.t, p.time) for p in preds if not p.failed])
    return {"markdown": md, "csv": csv_, "bop": bop}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``evaluate``: exit code 0, or 2 with one line naming the file on bad input.

    Prints the table and writes ``results.md``, ``results.csv``, the BOP CSV and ``result.json`` to
    ``--out`` (default: ``eval-<dataset>-<split>/`` beside the model)."""
    ap = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Φ checkpoint (pose6d_ros.models.save_model)")
    ap.add_argument("--split", required=True, help="BOP split folder, e.g. data/lm-lite/test")
    ap.add_argument("--registry", required=True, help="object registry YAML (or BOP models_info.json)")
    ap.add_argument("--objects", type=int, nargs="*", default=None, help="object ids (default: the model's)")
    ap.add_argument("--out", default=None,
                    help="folder for results.md/.csv, the BOP CSV and result.json "
                         "(default: eval-<dataset>-<split>/ beside the model)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate at most this many instances of each object")
    ap.add_argument("--plots", default=None, metavar="DIR",
                    help="also write recall-curve and error-histogram PNGs (and their data as CSV) to DIR")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = ap.parse_args(argv)
    return run_cli("evaluate", lambda: evaluate(a))


def evaluate(a: argparse.Namespace) -> Dict[str, object]:
    """The body of :func:`main`; returns what ``result.json`` holds."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.limit is not None and a.limit < 1:
        raise InputError(f"--limit must be >= 1, got {a.limit}")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    with reading(a.model, "--model"):
        model, card = load_model(a.model, map_location=a.device)
    reg_path = Path(a.registry)
    with reading(reg_path, "--registry"):
        registry = (ObjectRegistry.from_bop_models_info(reg_path) if reg_path.suffix == ".json"
                    else ObjectRegistry.from_yaml(reg_path))
    objects = RunObjects(registry, list(card.object_ids))
    ids = a.objects or list(card.object_ids)
    unknown = sorted(set(ids) - set(card.object_ids))
    if unknown:
        raise InputError(f"--objects {unknown}: not objects of the model {a.model} ({list(card.object_ids)})")
    items = items_from_split(a.split, ids)
    if a.limit is not None:  # per object: a global cap would keep only the first objects of the split
        items = first_per_object(items, a.limit)
    crops = TargetCrops(a.split, items, objects, card.crop_size, padding=card.crop_padding)  # as trained
    preds = predict_split(model, crops, torch.from_numpy(card.keypoints_array).float(), device=a.device)
    table = score_predictions(preds, registry)
    split = Path(a.split).resolve()
    out = Path(a.out) if a.out else Path(a.model).parent / f"eval-{split.parent.name}-{split.name}"
    paths = write_outputs(table, preds, out, dataset=split.parent.name, split=split.name)
    if getattr(a, "plots", None):
        paths.update(write_plots(object_errors(preds, registry), a.plots, title=f"{Path(a.model).name} on {a.split}"))
    result = {"model": str(a.model), "split": str(a.split), "registry": str(a.registry), "limit_per_object": a.limit,
              "files": {k: str(v) for k, v in paths.items()}, **table.to_dict()}
    paths["json"] = atomic_write_json(out / "result.json", result)
    print(format_markdown(table, f"{Path(a.model).name} on {a.split}"), flush=True)
    print("wrote", ", ".join(str(p) for p in paths.values()), flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
