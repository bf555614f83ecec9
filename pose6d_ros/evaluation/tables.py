"""Result tables: per-object recall as Markdown / CSV, and the BOP challenge results CSV.

BOP results format (https://bop.felk.cvut.cz/challenges/, "Format of results"): one line per
estimate ``scene_id,im_id,obj_id,score,R,t,time`` with ``R`` the 9 entries of the rotation
row-major separated by spaces, ``t`` in millimetres separated by spaces, ``time`` in seconds
(``-1`` when unknown).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from pose6d_ros._io import atomic_write_text

import numpy as np

__all__ = ["RecallTable", "BopEstimate", "format_markdown", "format_csv", "save_bop_results", "load_bop_results"]


@dataclass
class RecallTable:
    """Recall (%) per object and metric, plus the mean over objects.

    Attributes:
        metrics: column names in order, e.g. ``["ADD(-S)", "2D proj"]``.
        rows: object name -> metric name -> recall in percent.
        counts: object name -> number of evaluated instances.
    """

    metrics: List[str]
    rows: Dict[str, Dict[str, float]]
    counts: Dict[str, int]

    def mean(self) -> Dict[str, float]:
        """Unweighted mean over objects (LINEMOD tables average per-object recalls)."""
        out = {}
        for m in self.metrics:
            vals = [r[m] for r in self.rows.values() if m in r and not math.isnan(r[m])]
            out[m] = float(np.mean(vals)) if vals else float("nan")
        return out

    def to_dict(self) -> Dict[str, object]:
        """``{"metrics", "rows", "counts", "mean"}``: the table as plain data (for result JSON)."""
        return {"metrics": list(self.metrics), "rows": {k: dict(v) for k, v in self.rows.items()},
                "counts": dict(self.counts), "mean": self.mean()}


def format_markdown(table: RecallTable, title: Optional[str] = None, digits: int = 1) -> str:
    """A GitHub Markdown table with one row per object and a final ``mean`` row."""
    head = ["object", "n", *table.metrics]
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for name, row in table.rows.items():
        cells = [name, str(table.counts.get(name, 0))] + [f"{row.get(m, float('nan')):.{digits}f}" for m in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    mean = table.mean()
    total = sum(table.counts.values())
    lines.append("| **mean** | " + str(total) + " | " + " | ".join(f"**{mean[m]:.{digits}f}**" for m in table.metrics) + " |")
    return "\n".join(lines) + "\n"


def format_csv(table: RecallTable) -> str:
    """CSV with header ``object,n,<metrics...>`` and a final ``mean`` row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["object", "n", *table.metrics])
    for name, row in table.rows.items():
        w.writerow([name, table.counts.get(name, 0), *[f"{row.get(m, float('nan')):.4f}" for m in table.metrics]])
    mean = table.mean()
    w.writerow(["mean", sum(table.counts.values()), *[f"{mean[m]:.4f}" for m in table.metrics]])
    return buf.getvalue()


@dataclass(frozen=True)
class BopEstimate:
    """One pose estimate for the BOP results CSV (metres and seconds inside the code)."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,) metres
    time: float = -1.0


def save_bop_results(path: str | Path, estimates: Sequence[BopEstimate]) -> Path:
    """Write the BOP results CSV atomically (``t`` converted to millimetres)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["scene_id,im_id,obj_id,score,R,t,time"]
    for e in estimates:
        R = np.asarray(e.R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(e.t, dtype=np.float64).reshape(3) * 1000.0
        if not (np.isfinite(R).all() and np.isfinite(t).all()):
            raise ValueError(f"BOP results: non-finite pose for scene {e.scene_id} image {e.im_id} obj {e.obj_id}")
        r_txt = " ".join(repr(float(v)) for v in R.reshape(-1))
        t_txt = " ".join(repr(float(v)) for v in t)
        lines.append(f"{e.scene_id},{e.im_id},{e.obj_id},{float(e.score)!r},{r_txt},{t_txt},{float(e.time)!r}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def load_bop_results(path: str | Path) -> List[BopEstimate]:
    """Read a BOP results CSV back (``t`` to metres)."""
    path = Path(path)
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        expect = ["scene_id", "im_id", "obj_id", "score", "R", "t", "time"]
        if reader.fieldnames != expect:
            raise ValueError(f"{path}: header {reader.fieldnames}, expected {expect}")
        for i, row in enumerate(reader):
            R = np.array([float(v) for v in row["R"].split()], dtype=np.float64)
            t = np.array([float(v) for v in row["t"].split()], dtype=np.float64)
            if R.size != 9 or t.size != 3:
                raise ValueError(f"{path}: line {i + 2}: R needs 9 values and t 3")
            out.append(BopEstimate(int(row["scene_id"]), int(row["im_id"]), int(row["obj_id"]),
                                   float(row["score"]), R.reshape(3, 3), t / 1000.0, float(row["time"])))
    return out


def recall_table(per_object: Mapping[str, Mapping[str, Sequence[bool]]], metrics: Sequence[str]) -> RecallTable:
    """Build a :class:`RecallTable` from per-instance correctness flags."""
    rows, counts = {}, {}
    for name, flags in per_object.items():
        n = len(next(iter(flags.values()))) if flags else 0
        counts[name] = n
        rows[name] = {m: (100.0 * float(np.mean(flags[m])) if n else float("nan")) for m in metrics}
    return RecallTable(list(metrics), rows, counts)


__all__.append("recall_table")
