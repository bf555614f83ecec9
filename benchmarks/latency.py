"""Estimator latency, image in -> poses out, torch eager vs ONNX Runtime (CPU), in one run.

    .venv/bin/python benchmarks/latency.py [--frames 30] [--crop-size 64] [--threads 2]

Per frame: a 640x480 uint8 RGB image, a distorted camera, 1 / 5 / 13 detections of mixed classes
(lm-lite registry), the default Φ (ResNet-18 + CIN, untrained weights: latency does not depend on
them) at the default crop size. Both backends run the same Estimator (crop, undistort, PnP shared);
only the keypoint predictor differs. Reported: median and p90 per frame, the ORT/torch speed-up, and
the share of the frame spent in the network. Frames alternate between backends so that load from
other processes hits both alike. The ONNX Runtime variants tried are timed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pose6d_ros.geometry.camera import CameraModel  # noqa: E402
from pose6d_ros.models import DEFAULT_CONFIG, ModelCard, PoseNet, save_model  # noqa: E402
from pose6d_ros.registry import ObjectRegistry  # noqa: E402
from pose6d_ros.runtime import Estimator, OnnxPredictor, TorchPredictor, export_onnx  # noqa: E402


class TimedPredictor:
    """Wraps a predictor and accumulates the time spent in ``predict``."""

    def __init__(self, inner) -> None:
        self.inner, self.card, self.device, self.spent = inner, inner.card, inner.device, 0.0

    def predict(self, crops, object_index, detection_index):
        t0 = time.perf_counter()
        out = self.inner.predict(crops, object_index, detection_index)
        self.spent += time.perf_counter() - t0
        return out


def frame(n_det: int, registry: ObjectRegistry, rng: np.random.Generator):
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    names = registry.names
    dets = []
    for i in range(n_det):
        w, h = rng.uniform(60, 150, 2)
        x0, y0 = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        dets.append((names[i % len(names)], (x0, y0, x0 + w, y0 + h), 0.9))
    return image, dets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30, help="timed frames per backend and detection count")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--crop-size", type=int, default=DEFAULT_CONFIG["crop_size"])
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 5, 13])
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    registry = ObjectRegistry.from_yaml(ROOT / "config" / "objects_lm_lite.yaml")
    camera = CameraModel(K=np.array([[572.4, 0, 325.3], [0, 573.6, 242.0], [0, 0, 1]]), width=640, height=480,
                         distortion_model="plumb_bob", D=np.array([-0.1, 0.02, 0.0005, -0.0005, 0.0]))
    torch.manual_seed(0)
    net = PoseNet.from_config({"num_objects": len(registry), "crop_size": args.crop_size}).eval()
    card = ModelCard.for_model(net, registry)
    tmp = Path(tempfile.mkdtemp(prefix="pose6d_latency_"))
    save_model(tmp / "model.pt", net, card)
    export_onnx(net, card, tmp / "model.onnx", exporter="dynamo")

    backends = {
        "torch eager": Estimator(TimedPredictor(TorchPredictor(net, card, "cpu")), registry),
        "ORT CPU": Estimator(TimedPredictor(OnnxPredictor(tmp / "model.onnx", device="cpu",
                                                          intra_op_threads=args.threads)), registry),
    }
    print(f"# {len(registry)} objects, backbone {card.backbone}, crop {card.crop_size}, threads {args.threads}, "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"{'detections':>10} | {'backend':<12} | {'median ms':>9} | {'p90 ms':>7} | {'network %':>9} | speed-up")
    rng = np.random.default_rng(0)
    for n in args.counts:
        frames = [frame(n, registry, rng) for _ in range(args.warmup + args.frames)]
        times = {k: [] for k in backends}
        net_share = {k: [] for k in backends}
        for i, (image, dets) in enumerate(frames):
            for name, est in backends.items():
                est.predictor.spent = 0.0
                t0 = time.perf_counter()
                out = est.estimate(image, camera, dets)
                dt = time.perf_counter() - t0
                assert len(out) == n
                if i >= args.warmup:
                    times[name].append(dt * 1e3)
                    net_share[name].append(est.predictor.spent * 1e3 / (dt * 1e3))
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in backends:
            p90 = float(np.percentile(times[name], 90))
            ratio = med["torch eager"] / med[name]
            print(f"{n:>10} | {name:<12} | {med[name]:9.1f} | {p90:7.1f} | {100 * statistics.median(net_share[name]):8.0f}% "
                  f"| {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
