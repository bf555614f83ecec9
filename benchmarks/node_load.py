"""The estimator node under a robot's load: 30 Hz images x 5 detections beside another CPU-bound process.

    .venv/bin/python benchmarks/node_load.py [--model model.onnx] [--rate 30] [--detections 5] \
        [--duration 60] [--no-busy] [--node-arg num_threads:=1]

The node runs as its own process (the installed ``estimator_node`` console script with
``config/estimator.yaml``), as on a robot. This script publishes Image (640x480 bgr8), CameraInfo and
Detection2DArray at ``--rate`` with the same stamp, subscribes to ``/object_poses`` and
``/diagnostics``, and meanwhile a third process keeps one core busy (a 1-thread matrix-product loop,
``--no-busy`` turns it off). Reported: input and output rates, frames sent but never answered,
latency from publishing a frame to receiving its PoseArray (p50/p99), and the node's RSS after
warm-up and at the end. Targets on 2 cores (issue 15): >= 29 Hz out, p99 <= 60 ms, RSS growth <= 20 MB.

Without ``--model`` an untrained Φ of the default architecture is exported to ONNX in a temporary
folder: latency does not depend on the weights (its poses are mostly skipped as implausible, which
costs the node the same crop, network and PnP work). The published PoseArray is counted either way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")  # this process is the camera, not the workload
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._node_harness import (BUSY_LOOP, camera_info_msg, header_at, rss_mb,  # noqa: E402
                                     model_objects, scene, start_node, stop, untrained_model, wait_until_subscribed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="exported .onnx (default: an untrained one, exported here)")
    ap.add_argument("--no-busy", action="store_true", help="no CPU-bound process beside the node")
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second sent")
    ap.add_argument("--detections", type=int, default=5, help="detections per frame")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load after warm-up")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--node-arg", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra node parameter (repeatable), e.g. num_threads:=2")
    args = ap.parse_args(argv)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray

    from pose6d_ros.ros import conversions as conv

    tmp = tempfile.TemporaryDirectory(prefix="node_load_")
    model = Path(args.model) if args.model else untrained_model(Path(tmp.name))
    log_path = Path(tmp.name) / "node.log"
    node_proc = start_node(model, args.node_arg, log_path)
    busy = None if args.no_busy else subprocess.Popen(
        [sys.executable, "-c", BUSY_LOOP], env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})

    rclpy.init()
    node = rclpy.create_node("node_load_camera")
    pub_img = node.create_publisher(Image, "/camera/image_raw", 10)
    pub_info = node.create_publisher(CameraInfo, "/camera/camera_info", 10)
    pub_det = node.create_publisher(Detection2DArray, "/detections", 10)
    sent: Dict[Tuple[int, int], float] = {}
    received: Dict[Tuple[int, int], float] = {}
    diagnostics: List[DiagnosticArray] = []
    lock = threading.Lock()

    def on_poses(msg: PoseArray) -> None:
        with lock:
            received.setdefault(conv.stamp_key(msg.header.stamp), time.monotonic())

    node.create_subscription(PoseArray, "/object_poses", on_poses, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    rng = np.random.default_rng(0)
    frames = [scene(model_objects(model), args.detections, rng) for _ in range(8)]
    try:
        wait_until_subscribed((pub_img, pub_det), node_proc, log_path, "node_load")
        period = 1.0 / args.rate
        total = args.warmup + args.duration
        start = time.monotonic()
        k = 0
        rss_start = None
        measure_from = None
        while True:
            now = time.monotonic()
            if now - start >= total:
                break
            if rss_start is None and now - start >= args.warmup:
                rss_start, measure_from = rss_mb(node_proc.pid), k
            rgb, boxes = frames[k % len(frames)]
            header = header_at(k, int(period * 1e9))
            cam = camera_info_msg(header)
            dets = [conv.Detection(class_id=name, box=box, score=0.9) for name, box in boxes]
            image = conv.rgb_to_image(rgb, header, "bgr8")
            with lock:
                sent[(header.stamp.sec, header.stamp.nanosec)] = time.monotonic()
            pub_info.publish(cam)
            pub_img.publish(image)
            pub_det.publish(conv.detection2d_array_msg(header, dets))
            k += 1
            time.sleep(max(0.0, start + k * period - time.monotonic()))
        time.sleep(1.0)  # the last frames' answers
        rss_end = rss_mb(node_proc.pid)
        alive = node_proc.poll() is None
    finally:
        if busy is not None:
            busy.kill()
        stop(node_proc, executor, node)

    with lock:
        keys = sorted(sent)[measure_from:]
        got = [received[key] - sent[key] for key in keys if key in received]
    in_rate = len(keys) / args.duration
    out_rate = len(got) / args.duration
    lat = np.array(got) * 1000 if got else np.array([float("nan")])
    print(f"node_load: model={model.name} rate={args.rate:g} Hz x {args.detections} detections, "
          f"{args.duration:g} s measured after {args.warmup:g} s warm-up, busy process beside: {not args.no_busy}, "
          f"node args: {args.node_arg or 'defaults'}")
    print("| figure | value | target |\n|---|---:|---|")
    print(f"| input rate | {in_rate:.2f} Hz | |")
    print(f"| output rate | {out_rate:.2f} Hz | >= 29 Hz |")
    print(f"| frames not answered | {len(keys) - len(got)} of {len(keys)} ({100 * (1 - len(got) / max(len(keys), 1)):.1f}%) | |")
    print(f"| latency p50 / p99 | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms | p99 <= 60 ms |")
    print(f"| node RSS after warm-up / end | {rss_start:.1f} / {rss_end:.1f} MB (+{rss_end - rss_start:.1f}) | growth <= 20 MB |")
    print(f"| node alive at the end | {alive} | |")
    if diagnostics:
        last = diagnostics[-1]
        print(f"last /diagnostics ({len(diagnostics)} received):")
        for status in last.status:
            level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else status.level
            print(f"  [{level}] {status.name}: {status.message}; " + ", ".join(f"{kv.key}={kv.value}" for kv in status.values))
    else:
        print("no /diagnostics received")
    ok = alive and out_rate >= 29 and np.percentile(lat, 99) <= 60 and rss_end - rss_start <= 20
    print("targets met" if ok else "targets NOT met")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
