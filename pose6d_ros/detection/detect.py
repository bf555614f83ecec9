"""``detect``: run a trained detector over a BOP split (or a folder written by ``import_bag``) and write
the boxes in the BOP challenge's detection format.

Example::

    detect --model runs/det/detector.pt --objects config/objects.yaml --split data/bag --out dets.json

The output is a JSON list of ``{scene_id, image_id, category_id, bbox, score, time}``: ``category_id``
the registry id of the object, ``bbox`` ``[x, y, w, h]`` in pixels with ``x, y`` the top-left pixel
edge (COCO's convention, ``infer.edges_to_bop_box``), ``time`` the detector's seconds on that image.
It is what ``data.bop.load_detections`` reads, ``train_selfsup`` takes as ``data.detections`` and
``infer.evaluate_detections`` scores. Written atomically; exit code 0, or 2 with one line naming the
file on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pose6d_ros._checks import InputError, reading, run_cli
from pose6d_ros.data.bop import BopDataset, save_detections
from pose6d_ros.detection.infer import Detector, detect_split
from pose6d_ros.registry import ObjectRegistry

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detect", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="detector checkpoint (train_detector --out)")
    p.add_argument("--objects", required=True, help="object registry YAML (gives category_id)")
    p.add_argument("--split", required=True, help="BOP split folder: scene folders with rgb/ and scene_camera.json")
    p.add_argument("--out", required=True, help="detections JSON to write")
    p.add_argument("--min-score", type=float, default=0.3, help="drop detections scoring below this (default 0.3)")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="keep at most N detections of each object per image (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by scene and image id)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _run(a: argparse.Namespace) -> int:
    for flag, value, low in (("--limit", a.limit, 1), ("--max-per-class", a.max_per_class, 1)):
        if value is not None and value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= a.min_score <= 1.0:
        raise InputError(f"--min-score must be in [0, 1], got {a.min_score}")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    with reading(a.objects, "--objects"):
        registry = ObjectRegistry.from_yaml(a.objects)
    with reading(a.model, "--model"):
        detector = Detector.from_file(a.model, device=a.device, min_score=a.min_score, expect_names=registry.names)
    with reading(a.split, "--split"):
        n_images = len(BopDataset(a.split).images)
    if n_images == 0:
        raise InputError(f"--split {a.split}: no images")
    with reading(a.split, "--split"):
        dets = detect_split(detector, a.split, registry, limit=a.limit, max_per_class=a.max_per_class,
                            progress=not a.no_progress)
    out = Path(a.out)
    with reading(out, "--out"):
        save_detections(out, dets)
    n = min(n_images, a.limit) if a.limit else n_images
    times = {(d.scene_id, d.im_id): d.time for d in dets}
    mean_ms = 1000 * float(np.mean(list(times.values()))) if times else float("nan")
    print(f"wrote {len(dets)} detections of {len(set(d.obj_id for d in dets))} objects in {n} images to {out} "
          f"(score >= {a.min_score}; {mean_ms:.0f} ms/image with detections on {detector.device})", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``detect`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    return run_cli("detect", lambda: _run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
