"""Replay frames of a BOP split through the package's ROS 2 graph and score the poses it publishes.

    replay_frames --model runs/demo/pose/model.onnx --detector runs/demo/detector/detector.pt \
        --objects runs/demo/objects.yaml --split data/demo/test --frames 12 [--out runs/demo/graph]

Starts ``launch/estimator.launch.py`` (``launch_graph``, as ``ros2 launch`` would) with the detector node
when ``--detector`` is given, else the estimator alone with each frame's ground-truth visible boxes
published on ``/detections`` (an "external detector"). Publishes each frame's CameraInfo and Image, waits
for the estimator's answer (``~/detections``: each pose with its class), prints every pose next to the
ground truth, and returns per object the share of GT instances (>= 30% visible) with a pose within
ADD(-S) 0.1 d, the latency per frame (image published -> poses received) and overlay pictures. Used by
``make demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pose6d_ros.data import bop
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.ros import conversions as conv


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a node process the way ``Ctrl-C`` does (SIGINT: a clean rclpy shutdown), killing it after
    ``timeout`` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


MIN_VISIB = 0.3  # GT instances less visible than this are not counted (and get no GT box)


def _frames(split: Path, n: int) -> list:
    """``n`` labelled frames spread over the split's scenes (sorted ids)."""
    keys = [(scene, im_id) for scene in bop.iter_scenes(split) for im_id in scene.image_ids]
    if not keys:
        raise ValueError(f"replay: no frames in {split}")
    pick = np.unique(np.linspace(0, len(keys) - 1, min(n, len(keys))).round().astype(int))
    return [keys[i] for i in pick]


def _gt_detections(scene, im_id: int, registry: ObjectRegistry) -> list:
    out = []
    for gt, gi in zip(scene.gts[im_id], scene.gt_infos[im_id]):
        x, y, w, h = gi.bbox_visib
        if gt.obj_id in registry and w > 0 and h > 0 and gi.visib_fract >= MIN_VISIB:
            out.append(conv.Detection(class_id=registry.get(gt.obj_id).name, score=1.0,
                                      box=(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)))
    return out


def replay_graph(model: str | Path, objects: str | Path, split: str | Path, frames: int = 8,
                 detector: Optional[str | Path] = None, out: Optional[str | Path] = None,
                 log: Optional[str | Path] = None, timeout: float = 120.0, verbose: bool = True) -> Dict[str, Any]:
    """Run the graph on ``frames`` frames of ``split``; see the module docstring.

    Returns:
        ``{"frames", "answered", "add_recall": {name: %}, "counts": {name: n GT}, "latency_ms_p50",
        "latency_ms_max", "poses": [...], "overlays": {...} or None}``; the node output goes to ``log``
        (default: the console).
    """
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.node import Node
    from scipy.spatial.transform import Rotation
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    import torch

    from pose6d_ros.evaluation.evaluate import score_poses

    split = Path(split)
    registry = ObjectRegistry.from_yaml(objects)
    items = _frames(split, frames)
    launch_file = Path(__file__).resolve().parents[2] / "launch" / "estimator.launch.py"
    args = [f"model:={model}", f"objects:={objects}"]
    args += [f"detector_model:={detector}"] if detector else ["use_detector:=false"]
    sink = open(log, "a", encoding="utf-8") if log else None
    graph = subprocess.Popen([sys.executable, "-m", "pose6d_ros.ros.launch_graph", str(launch_file), *args],
                             stdout=sink, stderr=subprocess.STDOUT if sink else None,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rclpy.init()
    node = Node("pose6d_replay")
    received: Dict[tuple, Any] = {}
    arrived: Dict[tuple, float] = {}
    lock = threading.Condition()

    def on_poses(msg):
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with lock:
            received[key], arrived[key] = msg, time.perf_counter()
            lock.notify_all()

    # ~/detections carries each pose's class, so a pose is compared with a GT of its own object
    node.create_subscription(Detection3DArray, "/pose6d_estimator/detections", on_poses, 10)
    pub_img = node.create_publisher(Image, "/camera/image_raw", 10)
    pub_info = node.create_publisher(CameraInfo, "/camera/camera_info", 10)
    pub_det = None if detector else node.create_publisher(Detection2DArray, "/detections", 10)
    spin = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
    spin.start()
    say = print if verbose else (lambda *a, **k: None)
    hits: Dict[str, int] = {}
    counts: Dict[str, int] = {}
    latencies: List[float] = []
    poses: List[Dict[str, Any]] = []
    by_instance: Dict[tuple, tuple] = {}
    try:
        deadline = time.monotonic() + timeout
        need = 2 if detector else 1  # the detector and the estimator subscribe to the image
        while pub_img.get_subscription_count() < need:
            if graph.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replay: the graph did not come up (launch_graph exit {graph.poll()}; log: {log})")
            time.sleep(0.1)
        time.sleep(1.0)
        source = "the detector node" if detector else "ground-truth boxes"
        say(f"Replaying {len(items)} frames of {split} through the graph (boxes from {source}):")
        say(f"{'frame':>12} {'object':>12} {'|dt| mm':>8} {'ADD/d':>6}")
        for k, (scene, im_id) in enumerate(items):
            rgb = bop.load_rgb(split, scene.scene_id, im_id)
            cam = scene.cameras[im_id]
            header = Header(stamp=Time(sec=k + 1, nanosec=0), frame_id="camera_optical")
            info = CameraInfo(header=header, width=rgb.shape[1], height=rgb.shape[0], distortion_model="plumb_bob")
            info.k = [float(v) for v in cam.K.reshape(-1)]
            info.d = [0.0] * 5
            counted = [gt for gt, gi in zip(scene.gts[im_id], scene.gt_infos[im_id])
                       if gt.obj_id in registry and gi.visib_fract >= MIN_VISIB]
            for gt in counted:
                counts[registry.get(gt.obj_id).name] = counts.get(registry.get(gt.obj_id).name, 0) + 1
            pub_info.publish(info)
            time.sleep(0.05)
            t_pub = time.perf_counter()
            pub_img.publish(conv.rgb_to_image(rgb, header))
            if pub_det is not None:
                pub_det.publish(conv.detection2d_array_msg(header, _gt_detections(scene, im_id, registry)))
            with lock:
                lock.wait_for(lambda: (k + 1, 0) in received, timeout=30)
                msg = received.get((k + 1, 0))
            if msg is None:
                say(f"{scene.scene_id:>6}/{im_id:<5} no answer from the graph")
                continue
            latencies.append(1000 * (arrived[(k + 1, 0)] - t_pub))
            used = set()
            for det in msg.detections:  # each counted GT is matched by at most one pose of its class
                hyp = det.results[0]
                p = hyp.pose.pose
                t = np.array([p.position.x, p.position.y, p.position.z])
                R = Rotation.from_quat([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]).as_matrix()
                same = [g for g in counted if registry.get(g.obj_id).name == hyp.hypothesis.class_id and id(g) not in used]
                if not same:
                    continue
                gt = min(same, key=lambda g: np.linalg.norm(g.t - t))
                used.add(id(gt))
                obj = registry.get(gt.obj_id)
                K = torch.as_tensor(cam.K)[None]
                s = score_poses(obj, torch.as_tensor(R)[None], torch.as_tensor(t)[None], torch.as_tensor(gt.R)[None],
                                torch.as_tensor(gt.t)[None], K, torch.zeros(1, dtype=torch.bool))
                ok = bool(s["ADD(-S)"][0])
                hits[obj.name] = hits.get(obj.name, 0) + ok
                add_d = float(s["add_error"][0]) / obj.diameter
                by_instance[(scene.scene_id, im_id, gt.obj_id)] = (R, t)
                poses.append({"scene_id": scene.scene_id, "im_id": im_id, "object": obj.name, "t": t.tolist(),
                              "t_gt": gt.t.tolist(), "add_over_d": add_d, "correct": ok})
                say(f"{scene.scene_id:>6}/{im_id:<5} {obj.name:>12} {1000 * np.linalg.norm(t - gt.t):8.1f} {add_d:6.2f}")
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        stop_process(graph)
        if sink is not None:
            sink.close()
    overlays = None
    if out is not None and by_instance:
        from pose6d_ros.runtime.visualize import write_overlays

        overlays = write_overlays(split, by_instance, registry, Path(out) / "overlays", per_object=4)
        overlays = {"contact_sheet": str(overlays["contact_sheet"]), "frames": [str(f) for f in overlays["frames"]]}
    result = {"frames": len(items), "answered": len(latencies), "detector": str(detector) if detector else None,
              "add_recall": {n: 100.0 * hits.get(n, 0) / c for n, c in counts.items()}, "counts": counts,
              "latency_ms_p50": float(np.median(latencies)) if latencies else float("nan"),
              "latency_ms_max": float(np.max(latencies)) if latencies else float("nan"),
              "poses": poses, "overlays": overlays}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "replay.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="replay_frames", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="pose network (.onnx or .pt) for the estimator node")
    ap.add_argument("--objects", required=True, help="object registry YAML")
    ap.add_argument("--split", required=True, help="BOP split folder with labelled scenes (e.g. data/demo/test)")
    ap.add_argument("--detector", default=None, help="detector checkpoint: run the detector node (default: GT boxes)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--out", default=None, help="folder for replay.json and the overlay pictures")
    ap.add_argument("--log", default=None, help="file for the nodes' output (default: the console)")
    args = ap.parse_args(argv)
    for name in ("model", "objects", "split", "detector"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            print(f"replay_frames: --{name} {value} does not exist", file=sys.stderr)
            return 2
    try:
        res = replay_graph(args.model, args.objects, args.split, args.frames, detector=args.detector, out=args.out,
                           log=args.log)
    except (RuntimeError, ValueError) as e:
        print(str(e), file=sys.stderr)
        return 1
    print("ADD(-S) recall per object: " + ", ".join(f"{n} {v:.1f}% of {res['counts'][n]}"
                                                    for n, v in res["add_recall"].items())
          + f"; latency p50 {res['latency_ms_p50']:.0f} ms")
    return 0 if res["answered"] == res["frames"] else 1


if __name__ == "__main__":
    sys.exit(main())
