"""Malformed and valid messages on all three inputs of the estimator node: it stays up, publishes only
finite, plausible numbers, says what is wrong within 5 s, and holds its memory.

    .venv/bin/python benchmarks/node_fuzz.py [--messages 10000] [--rate 150] [--model model.onnx]

The node runs as its own process (``estimator_node`` with ``config/estimator.yaml``). Each round
sends a CameraInfo, an Image and a Detection2DArray; about one round in three carries one fault
drawn from ``FAULTS`` (bad encodings, truncated buffers, absurd intrinsics, NaN and tiny boxes,
unknown classes, 500 detections, stamps off by 1 ns, ...), the rest are valid. Checked:

- the node process is alive at the end;
- every published PoseArray / Detection3DArray number is finite, every quaternion has unit norm and
  every position lies within the node's depth range (``max_depth_m``);
- for each fault, the node logs a line of its warning kind (``[bad_image] ...``) within 5 s of the
  first message that carried it, and whether a line with the fault's own text appears is reported
  (several faults share a kind, and a throttled kind logs the latest text of its period);
- the node's RSS stays below its value after warm-up plus ``--rss-margin-mb``.

Counts per fault kind, latencies to the first log line and the RSS go to stdout as a table.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._node_harness import (HEIGHT, K, REGISTRY_YAML, WIDTH, camera_info_msg, header_at,  # noqa: E402
                                     model_objects, rss_mb, scene, start_node, stop,
                                     untrained_model, wait_until_subscribed)


@dataclass
class Round:
    """The three messages of one round (``None``: not sent) and the fault it carries."""

    camera_info: object
    image: object
    detections: object
    fault: str = "valid"


@dataclass(frozen=True)
class Fault:
    name: str
    node_kinds: str  # the node's warning kind(s) for it, ``a|b``: a line ``[kind] ...`` is due within 5 s
    text_pattern: str  # what that fault's own line says (regex); a throttled kind logs its latest text only
    make: Callable[["Round", np.random.Generator], None]  # corrupts a valid round in place


def _set(obj, **fields):
    for k, v in fields.items():
        setattr(obj, k, v)


def _det(r: Round, i: int = 0):
    return r.detections.detections[i]


def _camera_k(r: Round, k: np.ndarray) -> None:
    r.camera_info.k = [float(v) for v in k.reshape(-1)]


FAULTS: List[Fault] = [
    # images
    Fault("image_encoding", "bad_image", r"Image\.encoding", lambda r, g: _set(r.image, encoding="16UC1")),
    Fault("image_step", "bad_image", r"Image\.step", lambda r, g: _set(r.image, step=7)),
    Fault("image_truncated", "bad_image", r"Image\.data",
          lambda r, g: _set(r.image, data=bytes(r.image.data[:1000]))),
    Fault("image_zero_size", "bad_image", r"Image\.height", lambda r, g: _set(r.image, height=0)),
    Fault("image_size_mismatch", "camera_info_mismatch", r"camera_info says",
          lambda r, g: _set(r.camera_info, width=WIDTH // 2, height=HEIGHT // 2)),
    # camera_info
    Fault("camera_k_zero", "invalid_camera_info", r"CameraInfo\.k", lambda r, g: _camera_k(r, np.zeros(9))),
    Fault("camera_k_nan", "invalid_camera_info", r"CameraInfo\.k",
          lambda r, g: _camera_k(r, np.where(np.eye(3) > 0, np.nan, K))),
    Fault("camera_f_absurd", "invalid_camera_info", r"CameraInfo\.k: fx = .*field of view",
          lambda r, g: _camera_k(r, np.array([[1e12, 0, 320], [0, 1e12, 240], [0, 0, 1.0]]))),
    Fault("camera_principal_point_outside", "invalid_camera_info", r"CameraInfo\.k: principal point",
          lambda r, g: _camera_k(r, np.array([[570.0, 0, 9e4], [0, 570.0, -5e4], [0, 0, 1.0]]))),
    Fault("camera_distortion_length", "invalid_camera_info", r"CameraInfo",
          lambda r, g: _set(r.camera_info, d=[0.1, 0.2, 0.3])),
    # detections
    Fault("detection_no_hypothesis", "bad_detection", r"results", lambda r, g: _set(_det(r), results=[])),
    Fault("detection_nan_box", "bad_detection", r"bbox/score: non-finite",
          lambda r, g: _set(_det(r).bbox, size_x=float("nan"))),
    Fault("detection_nan_score", "bad_detection", r"bbox/score: non-finite",
          lambda r, g: _set(_det(r).results[0].hypothesis, score=float("nan"))),
    Fault("detection_negative_size", "bad_detection", r"bbox\.size", lambda r, g: _set(_det(r).bbox, size_y=-5.0)),
    Fault("detection_unknown_class", "unknown_class", r"no_such_object",
          lambda r, g: _set(_det(r).results[0].hypothesis, class_id="no_such_object")),
    Fault("detection_outside_image", "outside_image", r"does not overlap",
          lambda r, g: _set(_det(r).bbox.center.position, x=5e4, y=-3e4)),
    Fault("detection_one_pixel", "small_box", r"detection \d+ \(",
          lambda r, g: _set(_det(r).bbox, size_x=1.0, size_y=1.0)),
    Fault("detection_500", "too_many_detections", r"500 detections",
          lambda r, g: _set(r.detections, detections=[r.detections.detections[0]] * 500)),
    Fault("detection_stamp_1ns_off", "unpaired", r"offset|[+-]\d+ ns",
          lambda r, g: _set(r.detections.header.stamp, nanosec=(r.detections.header.stamp.nanosec + 1) % 10**9)),
    Fault("image_only", "unpaired|input_silent", r"images? .*(?:find no|without)|nothing received on /detections",
          lambda r, g: _set(r, detections=None)),
]


def _round(k: int, frames, period_ns: int, registry, rng: np.random.Generator) -> Round:
    from pose6d_ros.ros import conversions as conv

    rgb, boxes = frames[k % len(frames)]
    header = header_at(k, period_ns)
    dets = [conv.Detection(class_id=name, box=box, score=float(rng.uniform(0.5, 1.0))) for name, box in boxes]
    return Round(camera_info_msg(header), conv.rgb_to_image(rgb, header, "bgr8"),
                 conv.detection2d_array_msg(header_at(k, period_ns), dets))


def _log_times(log_text: str, pattern: str) -> List[float]:
    """Wall-clock seconds of the node's log lines (``[LEVEL] [sec.nsec] [node]: text``) that match."""
    out = []
    for m in re.finditer(r"^\[(?:WARN|ERROR|INFO)\] \[(\d+\.\d+)\] \[[^\]]*\]: (.*)$", log_text, re.M):
        if re.search(pattern, m.group(2)):
            out.append(float(m.group(1)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="exported .onnx (default: an untrained one, exported here)")
    ap.add_argument("--messages", type=int, default=10_000, help="messages to send over the three inputs")
    ap.add_argument("--rate", type=float, default=150.0, help="messages per second")
    ap.add_argument("--fault-share", type=float, default=0.35, help="share of rounds that carry a fault")
    ap.add_argument("--max-depth-m", type=float, default=20.0, help="the node's max_depth_m (plausibility bound)")
    ap.add_argument("--rss-margin-mb", type=float, default=150.0, help="allowed RSS growth after warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", help="keep the node's log at this path")
    args = ap.parse_args(argv)

    import rclpy
    from geometry_msgs.msg import PoseArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    from pose6d_ros.registry import ObjectRegistry

    registry = ObjectRegistry.from_yaml(REGISTRY_YAML)
    tmp = tempfile.TemporaryDirectory(prefix="node_fuzz_")
    model = Path(args.model) if args.model else untrained_model(Path(tmp.name))
    log_path = Path(args.log) if args.log else Path(tmp.name) / "node.log"
    node_proc = start_node(model, [f"max_depth_m:={args.max_depth_m}"], log_path)

    rclpy.init()
    node = rclpy.create_node("node_fuzz_client")
    pub_info = node.create_publisher(CameraInfo, "/camera/camera_info", 50)
    pub_img = node.create_publisher(Image, "/camera/image_raw", 50)
    pub_det = node.create_publisher(Detection2DArray, "/detections", 50)
    bad_numbers: List[str] = []
    published = {"poses": 0, "pose_arrays": 0, "detection3d": 0}

    def check_pose(p, where: str) -> None:
        vals = [p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y, p.orientation.z,
                p.orientation.w]
        if not all(math.isfinite(v) for v in vals):
            bad_numbers.append(f"{where}: non-finite {vals}")
        elif abs(math.sqrt(sum(v * v for v in vals[3:])) - 1) > 1e-3:
            bad_numbers.append(f"{where}: quaternion norm {vals[3:]}")
        elif not (0 < p.position.z <= args.max_depth_m) or math.dist(vals[:3], (0, 0, 0)) > 10 * args.max_depth_m:
            bad_numbers.append(f"{where}: implausible position {vals[:3]}")

    def on_poses(msg: PoseArray) -> None:
        published["pose_arrays"] += 1
        for p in msg.poses:
            published["poses"] += 1
            check_pose(p, "PoseArray")

    def on_det3d(msg: Detection3DArray) -> None:
        for d in msg.detections:
            published["detection3d"] += 1
            numbers = [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z] + [h.hypothesis.score for h in d.results]
            if not all(math.isfinite(v) for v in numbers):
                bad_numbers.append(f"Detection3D: non-finite box size or score {numbers}")
            for hyp in d.results:
                check_pose(hyp.pose.pose, "Detection3D")
            check_pose(d.bbox.center, "Detection3D.bbox")

    node.create_subscription(PoseArray, "/object_poses", on_poses, 100)
    node.create_subscription(Detection3DArray, "/pose6d_estimator/detections", on_det3d, 100)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    rng = np.random.default_rng(args.seed)
    frames = [scene(model_objects(model), 5, rng) for _ in range(6)]
    period_ns = 33_333_333
    first_sent: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    sent = 0
    rss_start: Optional[float] = None
    rss_max = 0.0
    try:
        wait_until_subscribed((pub_img, pub_det), node_proc, log_path, "node_fuzz")
        start, k = time.monotonic(), 0
        while sent < args.messages:
            r = _round(k, frames, period_ns, registry, rng)
            if k >= 30 and rng.random() < args.fault_share:  # 1 s of valid frames first (warm-up)
                fault = FAULTS[int(rng.integers(len(FAULTS)))]
                fault.make(r, rng)
                r.fault = fault.name
                first_sent.setdefault(fault.name, time.time())
            counts[r.fault] = counts.get(r.fault, 0) + 1
            for pub, msg in ((pub_info, r.camera_info), (pub_img, r.image), (pub_det, r.detections)):
                if msg is not None:
                    pub.publish(msg)
                    sent += 1
            k += 1
            if k == 30:
                time.sleep(2.0)
                rss_start = rss_mb(node_proc.pid)
            if k % 30 == 0:
                rss_max = max(rss_max, rss_mb(node_proc.pid))
            time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        time.sleep(6.0)  # the last fault's 5 s
        rss_end = rss_mb(node_proc.pid)
        rss_max = max(rss_max, rss_end)
        alive = node_proc.poll() is None
    finally:
        stop(node_proc, executor, node)

    log_text = log_path.read_text()
    print(f"node_fuzz: {sent} messages in {k} rounds at {args.rate:g} msg/s, model={model.name}, "
          f"node alive at the end: {alive}")
    print("| fault | rounds | node's warning kind | first line of that kind after | within 5 s | own text logged |\n"
          "|---|---:|---|---:|---|---|")
    missed = []
    for fault in FAULTS:
        if fault.name not in first_sent:
            print(f"| {fault.name} | 0 | {fault.node_kinds} | | not sent | |")
            continue
        kind_pattern = "|".join(rf"^\[{k}\]" for k in fault.node_kinds.split("|"))
        times = [t for t in _log_times(log_text, kind_pattern) if t >= first_sent[fault.name] - 0.5]
        delay = times[0] - first_sent[fault.name] if times else float("inf")
        if delay > 5.0:
            missed.append(fault.name)
        own = bool(_log_times(log_text, rf"^\[(?:{fault.node_kinds})\] .*(?:{fault.text_pattern})"))
        print(f"| {fault.name} | {counts[fault.name]} | {fault.node_kinds} | {delay:.2f} s | "
              f"{'yes' if delay <= 5.0 else 'NO'} | {'yes' if own else 'no'} |")
    print(f"| valid | {counts.get('valid', 0)} | | |")
    print(f"published: {published['pose_arrays']} PoseArrays with {published['poses']} poses, "
          f"{published['detection3d']} Detection3D; non-finite or implausible numbers: {len(bad_numbers)}")
    for line in bad_numbers[:10]:
        print("  " + line)
    print(f"node RSS after warm-up {rss_start:.0f} MB, max {rss_max:.0f} MB, end {rss_end:.0f} MB "
          f"(bound: +{args.rss_margin_mb:g} MB)")
    tracebacks = log_text.count("Traceback")
    print(f"tracebacks in the node's log: {tracebacks}")
    ok = alive and not bad_numbers and not missed and rss_max - rss_start <= args.rss_margin_mb and not tracebacks
    print("all checks passed" if ok else f"checks FAILED (faults not logged in time: {missed})")
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
