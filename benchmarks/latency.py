"""Estimator latency, image in -> poses out, torch eager vs ONNX Runtime (CPU), in one run.

    .venv/bin/python benchmarks/latency.py [--frames 30] [--crop-size 64] [--threads 2]

Per frame: a 640x480 uint8 RGB image, a distorted camera, 1 / 5 / 13 detections of mixed classes
(lm-lite registry), the default Φ (ResNet-18 + CIN, untrained weights: latency does not depend on
them) at the default crop size. Both backends run the same Estimator (crop, undistort, PnP shared);
only the keypoint predictor differs. Reported: wall-clock median and p90 per frame, the time in the
network, the ORT/torch speed-up, and the process CPU time per frame (less sensitive to other
processes on a shared machine; ORT's threads do not spin-wait by default here). Frames alternate
between backends so that load from other processes hits both alike. The ONNX Runtime variants tried are timed too.
"""

from __future__ import annotations

import argparse
import os
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
from pose6d_ros.runtime import Estimator, OnnxPredictor, TorchPredictor, export_onnx, quantize_onnx  # noqa: E402


class TimedPredictor:
    """Wraps a predictor and accumulates the time spent in ``predict``."""

    def __init__(self, inner) -> None:
        self.inner, self.card, self.device, self.spent = inner, inner.card, inner.device, 0.0

    def predict(self, crops, object_index, detection_index):
        t0 = time.perf_counter()
        out = self.inner.predict(crops, object_index, detection_index)
        self.spent += time.perf_counter() - t0
        return out


def _ort_variant(path: Path, intra_op_threads: int, spin: bool = False, level: str = "all"):
    import onnxruntime as ort

    from pose6d_ros.runtime.backends import default_session_options

    so = default_session_options(intra_op_threads, spin=spin)
    if level == "basic":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


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
    # INT8 ranges from random crops: fine for timing, not for accuracy (use real crops for a deployment).
    calib = np.random.default_rng(1).random((32, 3, card.crop_size, card.crop_size), dtype=np.float32)
    quantize_onnx(tmp / "model.onnx", tmp / "model.int8.onnx", calib)

    backends = {
        "torch eager": Estimator(TimedPredictor(TorchPredictor(net, card, "cpu")), registry),
        "ORT CPU": Estimator(TimedPredictor(OnnxPredictor(tmp / "model.onnx", device="cpu",
                                                          intra_op_threads=args.threads)), registry),
        "ORT CPU int8": Estimator(TimedPredictor(OnnxPredictor(tmp / "model.int8.onnx", device="cpu",
                                                               intra_op_threads=args.threads)), registry),
    }
    print(f"# {len(registry)} objects, backbone {card.backbone}, crop {card.crop_size}, threads {args.threads}, "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"# load average at start: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(f"{'detections':>10} | {'backend':<13} | {'median ms':>9} | {'p90 ms':>7} | {'network ms':>10} "
          f"| speed-up | CPU ms | CPU speed-up")
    rng = np.random.default_rng(0)
    for n in args.counts:
        frames = [frame(n, registry, rng) for _ in range(args.warmup + args.frames)]
        times = {k: [] for k in backends}
        cpu = {k: [] for k in backends}
        net_ms = {k: [] for k in backends}
        for i, (image, dets) in enumerate(frames):
            for name, est in backends.items():
                est.predictor.spent = 0.0
                c0, t0 = time.process_time(), time.perf_counter()
                out = est.estimate(image, camera, dets)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                assert len(out) == n
                if i >= args.warmup:
                    times[name].append(dt * 1e3)
                    cpu[name].append(dc * 1e3)
                    net_ms[name].append(est.predictor.spent * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in backends:
            p90 = float(np.percentile(times[name], 90))
            ratio = med["torch eager"] / med[name]
            cpu_ratio = statistics.median(cpu["torch eager"]) / statistics.median(cpu[name])
            print(f"{n:>10} | {name:<13} | {med[name]:9.1f} | {p90:7.1f} | {statistics.median(net_ms[name]):10.1f} "
                  f"| {ratio:7.2f}x | {statistics.median(cpu[name]):6.1f} | {cpu_ratio:.2f}x")

    print("\n# network alone (predict on ready crops), ONNX Runtime variants; speed-up over torch eager")
    variants = {
        f"ORT all-opt, {args.threads} thr": dict(intra_op_threads=args.threads),
        "ORT all-opt, 1 thr": dict(intra_op_threads=1),
        f"ORT all-opt, {args.threads} thr, spin": dict(intra_op_threads=args.threads, spin=True),
        f"ORT basic-opt, {args.threads} thr": dict(intra_op_threads=args.threads, level="basic"),
    }
    sessions = {k: _ort_variant(tmp / "model.onnx", **v) for k, v in variants.items()}
    sessions[f"ORT int8, {args.threads} thr"] = _ort_variant(tmp / "model.int8.onnx", args.threads)
    torch_pred = TorchPredictor(net, card, "cpu")
    print(f"{'batch':>5} | {'torch ms':>8} | " + " | ".join(f"{k:>26}" for k in sessions))
    for n in args.counts:
        crops = torch.rand(n, 3, card.crop_size, card.crop_size)
        idx = torch.arange(n) % len(registry)
        feed = {"crops": crops.numpy(), "object_index": idx.numpy()}
        t_torch, t_ort = [], {k: [] for k in sessions}
        for i in range(args.warmup + args.frames):
            t0 = time.perf_counter()
            with torch.inference_mode():
                torch_pred.model(crops, idx)
            t_torch.append(time.perf_counter() - t0)
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feed)
                t_ort[k].append(time.perf_counter() - t0)
        mt = statistics.median(t_torch[args.warmup:]) * 1e3
        cells = []
        for k in sessions:
            mo = statistics.median(t_ort[k][args.warmup:]) * 1e3
            cells.append(f"{mo:8.1f} ms ({mt / mo:4.2f}x)".rjust(26))
        print(f"{n:>5} | {mt:8.1f} | " + " | ".join(cells))
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
