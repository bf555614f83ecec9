"""Crops and augmentation: batched torch paths against per-item references, timed in the same run.

Run: ``.venv/bin/python benchmarks/crops.py``.  Prints medians (ms) and ratios to the reference
(< 1: ours is faster).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torchvision.transforms as T

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pose6d_ros.data.augment import ColorAugmentConfig, color_augment, cross_domain_occlusion  # noqa: E402
from pose6d_ros.data.crops import DEFAULT_CROP_PADDING, crop_image_cv2, crop_images, square_windows  # noqa: E402


def _interleaved(fns: Dict[str, Callable[[], object]], reps: int = 15) -> Dict[str, float]:
    times: Dict[str, list] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def bench_crops(n: int, size: int = 128) -> None:
    g = torch.Generator().manual_seed(0)
    img_np = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    img_f = img_np.astype(np.float32) / 255
    img_t = torch.from_numpy(img_f).permute(2, 0, 1)[None].contiguous()
    c = torch.rand(n, 2, generator=g) * torch.tensor([600.0, 440.0]) + 20
    wh = torch.rand(n, 2, generator=g) * 120 + 40
    windows = square_windows(torch.cat((c - wh / 2, c + wh / 2), 1), DEFAULT_CROP_PADDING)
    win_np = windows.double().numpy()
    res = _interleaved({
        "cv2 loop (ref)": lambda: np.stack([crop_image_cv2(img_f, w, size) for w in win_np]),
        "torch one image": lambda: crop_images(img_t, windows, size),
        "torch batch_idx": lambda: crop_images(img_t, windows, size, batch_idx=torch.zeros(n, dtype=torch.long)),
    })
    ref = res["cv2 loop (ref)"]
    for k, v in res.items():
        print(f"  crops N={n:3d} S={size}: {k:18s} {v:8.2f} ms  ratio {v / ref:5.2f}")


def bench_augment(b: int = 16, size: int = 128) -> None:
    x = torch.rand(b, 3, size, size)
    r = torch.rand(b, 3, size, size)
    m = torch.rand(b, 1, size, size)
    g = torch.Generator().manual_seed(0)
    jitter = T.Compose([T.ColorJitter(0.3, 0.3, 0.3, 0.03), T.GaussianBlur(7, (0.1, 1.0))])
    cfg = ColorAugmentConfig(p=1.0, p_blur=1.0)
    res = _interleaved({
        "torchvision per-sample (ref)": lambda: torch.stack([jitter(xi) for xi in x]),
        "color_augment batched": lambda: color_augment(x, cfg, g),
        "cross_domain_occlusion": lambda: cross_domain_occlusion(x, r, m, generator=g),
    })
    ref = res["torchvision per-sample (ref)"]
    for k, v in res.items():
        print(f"  augment B={b} S={size}: {k:30s} {v:8.2f} ms  ratio {v / ref:5.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    print("one torch / cv2 thread")
    for n in (1, 8, 32):
        bench_crops(n)
    bench_augment()
