"""Evaluation plots: recall against the ADD(-S) / 2D-projection threshold per object, and error histograms.

``evaluate --plots DIR`` writes them; the demo calls :func:`write_plots` directly. Files (PNG through
matplotlib's Agg canvas: no display, no pyplot state):

- ``recall_curves.png``: recall (%) against the ADD(-S) threshold (fraction of the diameter, 0..0.5) and
  against the 2D-projection threshold (0..50 px), one line per object; the dotted lines mark the table's
  thresholds (0.1 d, 5 px), where the curves equal the table's recalls.
- ``error_histograms.png``: ADD(-S) / diameter, 2D projection error (px), rotation error (deg) and
  translation error (cm) per object; failed estimates are left out, errors past the axis go in the last bin.
- ``recall_curves.csv``: the curves' data, ``metric,threshold,object,recall`` (recall in percent).
- ``errors.csv``: the per-instance errors, ``object,scene_id,im_id,failed,add_m,add_over_d,proj_px,rot_deg,trans_m``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pose6d_ros._io import atomic_write_bytes, atomic_write_text

__all__ = ["ObjectErrors", "ADD_THRESHOLDS", "PROJ_THRESHOLDS_PX", "recall_curve",
           "poses_from_predictions", "write_plots"]

#: ADD(-S) thresholds of the recall curve, fractions of the diameter (0.1, the table's, exactly among them).
ADD_THRESHOLDS = np.round(np.linspace(0.0, 0.5, 51), 6)
#: 2D-projection thresholds of the recall curve, pixels (5, the table's, among them).
PROJ_THRESHOLDS_PX = np.arange(0.0, 50.5, 1.0)
# Histogram ranges; larger errors land in the last bin.
_HIST = {"add": (1.0, "ADD(-S) / diameter"), "proj": (50.0, "2D projection error (px)"),
         "rot": (180.0, "rotation error (deg)"), "trans": (20.0, "translation error (cm)")}


@dataclass
class ObjectErrors:
    """Per-instance pose errors of one object (``N`` evaluated instances).

    Attributes:
        name: object name; diameter: metres; symmetric: ``add`` is ADD-S (closest point) when true.
        keys: ``(N, 2)`` int ``(scene_id, im_id)``.
        add: ``(N,)`` ADD(-S), metres (``evaluate``'s rule, :func:`pose6d_ros.evaluation.evaluate.score_poses`).
        proj: ``(N,)`` mean 2D projection error of the model points, image pixels.
        rot: ``(N,)`` rotation error, degrees; trans: ``(N,)`` translation error, metres.
        failed: ``(N,)`` bool: PnP failed (never correct, left out of the histograms).
    """

    name: str
    diameter: float
    symmetric: bool
    keys: np.ndarray
    add: np.ndarray
    proj: np.ndarray
    rot: np.ndarray
    trans: np.ndarray
    failed: np.ndarray

    def __len__(self) -> int:
        return len(self.add)


def recall_curve(e: ObjectErrors, thresholds: np.ndarray, metric: str = "add") -> np.ndarray:
    """Recall (%) at each threshold: ``add < thr * diameter`` (``metric="add"``, thresholds in diameters) or
    ``proj < thr`` (``"proj"``, pixels), a failed estimate never counting; ``(T,)``, NaN for no instance."""
    thr = np.asarray(thresholds, np.float64)
    if metric == "add":
        err, lim = e.add, thr * e.diameter
    elif metric == "proj":
        err, lim = e.proj, thr
    else:
        raise ValueError(f"metric must be 'add' or 'proj', got {metric!r}")
    if len(err) == 0:
        return np.full(len(thr), np.nan)
    ok = (np.asarray(err)[None, :] < lim[:, None]) & ~np.asarray(e.failed, bool)[None, :]
    return 100.0 * ok.mean(axis=1)


def poses_from_predictions(preds: Sequence) -> Dict[Tuple[int, int, int], Tuple[np.ndarray, np.ndarray]]:
    """``{(scene_id, im_id, obj_id): (R, t)}`` of the non-failed predictions: the estimates
    :func:`pose6d_ros.runtime.visualize.write_overlays` draws."""
    return {(int(p.scene_id), int(p.im_id), int(p.obj_id)): (np.asarray(p.R), np.asarray(p.t))
            for p in preds if not p.failed}


def _figure(rows: int, cols: int, size: Tuple[float, float]):
    from matplotlib.figure import Figure  # the Agg canvas: Figure.savefig needs no pyplot nor display

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def write_plots(errors_by_object: Mapping[str, ObjectErrors], out_dir: Union[str, Path],
                title: Optional[str] = None) -> Dict[str, Path]:
    """Write the recall curves, the error histograms and their data (module docstring) to ``out_dir``.

    Args:
        errors_by_object: object name -> errors (:func:`pose6d_ros.evaluation.evaluate.object_errors`).
        out_dir: created if missing.
        title: figure title (e.g. the model and split).

    Returns:
        ``{"recall_curves": png, "error_histograms": png, "recall_csv": csv, "errors_csv": csv}``.
    """
    if not errors_by_object:
        raise ValueError("write_plots: no objects")
    out_dir = Path(out_dir)
    objs = list(errors_by_object.values())
    rows = []
    fig, ax = _figure(1, 2, (10.0, 4.0))
    panels = (("add", ADD_THRESHOLDS, ax[0, 0], "ADD(-S) threshold (fraction of diameter)", 0.1),
              ("proj", PROJ_THRESHOLDS_PX, ax[0, 1], "2D projection threshold (px)", 5.0))
    for metric, thr, a, xlabel, mark in panels:
        for e in objs:
            r = recall_curve(e, thr, metric)
            a.plot(thr, r, label=f"{e.name} (n={len(e)})")
            rows += [(metric, f"{x:g}", e.name, f"{y:.4f}") for x, y in zip(thr, r)]
        a.axvline(mark, color="0.5", linestyle=":")
        a.set(xlabel=xlabel, ylabel="recall (%)", ylim=(0, 100), xlim=(thr[0], thr[-1]))
        a.grid(alpha=0.3)
    ax[0, 0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    paths = {"recall_curves": _save(fig, out_dir / "recall_curves.png")}

    fig, ax = _figure(2, 2, (10.0, 7.0))
    for a, (key, (hi, xlabel)) in zip(ax.ravel(), _HIST.items()):
        bins = np.linspace(0.0, hi, 26)
        for e in objs:
            ok = ~np.asarray(e.failed, bool)
            v = {"add": e.add / e.diameter, "proj": e.proj, "rot": e.rot, "trans": 100.0 * e.trans}[key][ok]
            v = v[np.isfinite(v)]
            a.hist(np.clip(v, 0.0, hi), bins=bins, histtype="step", linewidth=1.5, label=e.name)
        a.set(xlabel=f"{xlabel}; the last bin holds all >= {bins[-2]:g}", ylabel="instances")
    ax[0, 0].axvline(0.1, color="0.5", linestyle=":")
    ax[0, 1].axvline(5.0, color="0.5", linestyle=":")
    ax[0, 0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    paths["error_histograms"] = _save(fig, out_dir / "error_histograms.png")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "threshold", "object", "recall"])
    w.writerows(rows)
    paths["recall_csv"] = atomic_write_text(out_dir / "recall_curves.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["object", "scene_id", "im_id", "failed", "add_m", "add_over_d", "proj_px", "rot_deg", "trans_m"])
    for e in objs:
        for i in range(len(e)):
            w.writerow([e.name, int(e.keys[i, 0]), int(e.keys[i, 1]), int(bool(e.failed[i])), repr(float(e.add[i])),
                        repr(float(e.add[i] / e.diameter)), repr(float(e.proj[i])), repr(float(e.rot[i])),
                        repr(float(e.trans[i]))])
    paths["errors_csv"] = atomic_write_text(out_dir / "errors.csv", buf.getvalue())
    return paths
