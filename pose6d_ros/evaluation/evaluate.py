"""Evaluate Φ on a BOP split: ADD(-S) recall, 2D projection recall, tables, BOP results CSV.

Protocol (Sec. 4): GT visible boxes (``bbox_visib`` of ``scene_gt_info.json``, what a perfect
detector gives) isolate pose quality (as the paper's Table 5); in scene ``k`` only the target object
``k`` is evaluated (LINEMOD protocol). A pose is correct under ADD when the mean model-point distance is below 10% of
the diameter (ADD-S, closest point, for symmetric objects), and under 2D projection when the mean
reprojection error of the model points is below 5 px.

    evaluate --model runs/x/model.pt --split data/lm-lite/test --registry data/lm-lite/objects.yaml
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

from pose6d_ros.evaluation.tables import (
    BopEstimate,
    RecallTable,
    format_csv,
    format_markdown,
    recall_table,
    save_bop_results,
)

__all__ = ["InstancePrediction", "predict_split", "score_predictions", "predict_crops", "main"]

log = logging.getLogger("pose6d_ros.evaluation")

ADD_THRESHOLD = 0.1  # fraction of the diameter
PROJ_THRESHOLD_PX = 5.0


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
    from pose6d_ros.geometry.camera import normalized_to_pixels
    from pose6d_ros.geometry.pnp import solve_pnp

    S = images.shape[-1]
    h = model(images, object_index).float()
    uv = normalized_to_pixels(h, S)
    kp3 = keypoints_3d.to(uv)[object_index]
    return solve_pnp(uv, kp3, K_crop.float()), h


def predict_split(model: torch.nn.Module, crops, keypoints_3d: torch.Tensor, batch_size: int = 32,
                  device: torch.device | str = "cpu", limit: Optional[int] = None) -> List[InstancePrediction]:
    """Predict every item of a labelled :class:`pose6d_ros.training.build.TargetCrops` (no jitter)."""
    model = model.eval().to(device)
    n = len(crops) if limit is None else min(limit, len(crops))
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


def score_predictions(preds: Sequence[InstancePrediction], registry, names: Optional[Dict[int, str]] = None,
                      max_points: int = 1000) -> RecallTable:
    """ADD(-S) at 10% of the diameter and 2D projection at 5 px, per object.

    Uses ``pose6d_ros.geometry.metrics`` (``add``, ``adi``, ``proj_error``).
    """
    from pose6d_ros.geometry import metrics

    by_obj: Dict[int, List[InstancePrediction]] = {}
    for p in preds:
        by_obj.setdefault(p.obj_id, []).append(p)
    flags: Dict[str, Dict[str, List[bool]]] = {}
    for obj_id in sorted(by_obj):
        info = registry.get(obj_id)
        pts = np.asarray(info.model_vertices(), dtype=np.float64)
        if len(pts) > max_points:  # a fixed subsample keeps ADD-S's all-pairs search small
            pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
        ps = by_obj[obj_id]
        R = torch.from_numpy(np.stack([p.R for p in ps]))
        t = torch.from_numpy(np.stack([p.t for p in ps]))
        Rg = torch.from_numpy(np.stack([p.R_gt for p in ps]))
        tg = torch.from_numpy(np.stack([p.t_gt for p in ps]))
        K = torch.from_numpy(np.stack([p.K for p in ps]))
        P = torch.from_numpy(pts)
        fn = metrics.adi if info.is_symmetric else metrics.add
        e_add = fn(R, t, Rg, tg, P)
        e_proj = metrics.proj_error(R, t, Rg, tg, K, P)
        failed = torch.tensor([p.failed for p in ps])
        ok_add = (e_add < ADD_THRESHOLD * info.diameter) & ~failed
        ok_proj = (e_proj < PROJ_THRESHOLD_PX) & ~failed
        name = (names or {}).get(obj_id, info.name)
        flags[name] = {"ADD(-S)": ok_add.tolist(), "2D proj 5px": ok_proj.tolist()}
    return recall_table(flags, ["ADD(-S)", "2D proj 5px"])


def write_outputs(table: RecallTable, preds: Sequence[InstancePrediction], out_dir: str | Path,
                  title: str = "Pose recall (%)", method: str = "pose6d", dataset: str = "lm-lite",
                  split: str = "test") -> Dict[str, Path]:
    """``results.md``, ``results.csv`` and the BOP CSV ``<method>_<dataset>-<split>.csv`` (BOP's naming;
    ``method`` must not contain ``_``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_ = out_dir / "results.md", out_dir / "results.csv"
    md.write_text(format_markdown(table, title))
    csv_.write_text(format_csv(table))
    bop = save_bop_results(out_dir / f"{method.replace('_', '-')}_{dataset}-{split}.csv", [
        BopEstimate(p.scene_id, p.im_id, p.obj_id, 1.0, p.R, p.t, p.time) for p in preds if not p.failed])
    return {"markdown": md, "csv": csv_, "bop": bop}


def main(argv: Optional[Sequence[str]] = None) -> RecallTable:
    """Console script ``evaluate``."""
    from pose6d_ros.models import load_model
    from pose6d_ros.registry import ObjectRegistry

    ap = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Φ checkpoint (pose6d_ros.models.save_model)")
    ap.add_argument("--split", required=True, help="BOP split folder, e.g. data/lm-lite/test")
    ap.add_argument("--registry", required=True, help="object registry YAML (or BOP models_info.json)")
    ap.add_argument("--objects", type=int, nargs="*", default=None, help="object ids (default: the model's)")
    ap.add_argument("--out", default=None, help="folder for results.md/.csv and the BOP CSV")
    ap.add_argument("--limit", type=int, default=None, help="evaluate at most this many instances")
    ap.add_argument("--padding", type=float, default=1.3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pose6d_ros.training.build import RunObjects, TargetCrops, items_from_split

    model, card = load_model(a.model, map_location=a.device)
    reg_path = Path(a.registry)
    registry = ObjectRegistry.from_bop_models_info(reg_path) if reg_path.suffix == ".json" else ObjectRegistry.from_yaml(reg_path)
    objects = RunObjects(registry, list(card.object_ids))
    ids = a.objects or list(card.object_ids)
    crops = TargetCrops(a.split, items_from_split(a.split, ids), objects, card.crop_size, padding=a.padding)
    preds = predict_split(model, crops, torch.from_numpy(card.keypoints_array).float(), device=a.device,
                          limit=a.limit)
    table = score_predictions(preds, registry)
    print(format_markdown(table, f"{Path(a.model).name} on {a.split}"))
    if a.out:
        split = Path(a.split).resolve()
        paths = write_outputs(table, preds, a.out, dataset=split.parent.name, split=split.name)
        print("wrote", ", ".join(str(p) for p in paths.values()))
    return table


if __name__ == "__main__":
    main()
