"""Replay frames of a BOP split through the estimator node and print the poses it publishes.

    replay_frames --model runs/quick_demo/model.onnx --objects data/lm-lite/objects.yaml \
        --split data/lm-lite/test --frames 8

Starts the `estimator_node` executable as its own process (as `ros2 launch` would), publishes each
frame's Image, CameraInfo and GT-box Detection2DArray, and prints every pose next to the ground truth
(translation error and ADD). Used by `make demo`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from pose6d_ros.data import bop
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.ros import conversions as conv


def _estimator_command(model: str, objects: str, extra: Sequence[str]) -> List[str]:
    exe = shutil.which("estimator_node")
    cmd = [exe] if exe else [sys.executable, "-m", "pose6d_ros.ros.estimator_node"]
    share = Path(__file__).resolve().parents[2] / "config" / "estimator.yaml"
    params = ["--params-file", str(share)] if share.is_file() else []
    return cmd + ["--ros-args", *params, "-p", f"model:={model}", "-p", f"objects:={objects}", *extra]


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a node process the way ``Ctrl-C`` does (SIGINT: a clean rclpy shutdown), killing it after
    ``timeout`` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def replay(model: str, objects: str, split: str, frames: int = 8, timeout: float = 60.0) -> int:
    import rclpy
    from builtin_interfaces.msg import Time
    from vision_msgs.msg import Detection3DArray
    from rclpy.node import Node
    from scipy.spatial.transform import Rotation
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    registry = ObjectRegistry.from_yaml(objects)
    items = []
    for scene in bop.iter_scenes(split):
        for im_id in scene.image_ids[: max(1, frames // 2)]:
            items.append((scene, im_id))
    items = items[:frames]
    if not items:
        print(f"replay: no frames in {split}", file=sys.stderr)
        return 2

    node_proc = subprocess.Popen(_estimator_command(model, objects, []),
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rclpy.init()
    node = Node("pose6d_replay")
    received = {}
    lock = threading.Condition()

    def on_poses(msg):
        with lock:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            lock.notify_all()

    # ~/detections carries each pose's class, so a pose is compared with a GT of its own object
    node.create_subscription(Detection3DArray, "/pose6d_estimator/detections", on_poses, 10)
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    pub_img = node.create_publisher(Image, "/camera/image_raw", 10)
    pub_info = node.create_publisher(CameraInfo, "/camera/camera_info", 10)
    pub_det = node.create_publisher(Detection2DArray, "/detections", 10)
    spin = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
    spin.start()
    code = 0
    try:
        deadline = time.monotonic() + timeout
        while pub_img.get_subscription_count() == 0:
            if node_proc.poll() is not None or time.monotonic() > deadline:
                print("replay: the estimator node did not come up", file=sys.stderr)
                return 2
            time.sleep(0.1)
        time.sleep(1.0)
        print(f"\nReplaying {len(items)} frames of {split} through estimator_node:")
        print(f"{'frame':>12} {'object':>12} {'t_est (m)':>28} {'t_gt (m)':>28} {'|dt| mm':>8} {'ADD/d':>6}")
        for k, (scene, im_id) in enumerate(items):
            rgb = bop.load_rgb(split, scene.scene_id, im_id)
            cam = scene.cameras[im_id]
            stamp = Time(sec=k + 1, nanosec=0)
            header = Header(stamp=stamp, frame_id="camera_optical")
            info = CameraInfo(header=header, width=rgb.shape[1], height=rgb.shape[0], distortion_model="plumb_bob")
            info.k = [float(v) for v in cam.K.reshape(-1)]
            info.d = [0.0] * 5
            gts = scene.gts[im_id]
            infos = scene.gt_infos[im_id]
            dets, gt_of = [], []
            for gt, gi in zip(gts, infos):
                x, y, w, h = gi.bbox_visib
                if w <= 0 or h <= 0 or gi.visib_fract < 0.3:
                    continue
                dets.append(conv.Detection(class_id=registry.get(gt.obj_id).name, score=1.0,
                                           box=(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)))
                gt_of.append(gt)
            pub_info.publish(info)
            time.sleep(0.05)
            pub_img.publish(conv.rgb_to_image(rgb, header))
            pub_det.publish(conv.detection2d_array_msg(header, dets))
            with lock:
                lock.wait_for(lambda: (k + 1, 0) in received, timeout=30)
                msg = received.get((k + 1, 0))
            if msg is None:
                print(f"{scene.scene_id:>6}/{im_id:<5} no answer from the node")
                code = 1
                continue
            # The node publishes only the detections it could solve; match each to the nearest GT of its class.
            for det in msg.detections:
                hyp = det.results[0]
                p = hyp.pose.pose
                t = np.array([p.position.x, p.position.y, p.position.z])
                R = Rotation.from_quat([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]).as_matrix()
                same = [g for g in gt_of if registry.get(g.obj_id).name == hyp.hypothesis.class_id]
                if not same:
                    continue
                gt = min(same, key=lambda g: np.linalg.norm(g.t - t))
                obj = registry.get(gt.obj_id)
                pts = np.asarray(obj.keypoints)
                add = np.linalg.norm(pts @ R.T + t - (pts @ gt.R.T + gt.t), axis=1).mean() / obj.diameter
                print(f"{scene.scene_id:>6}/{im_id:<5} {obj.name:>12} {np.array2string(t, precision=3):>28} "
                      f"{np.array2string(gt.t, precision=3):>28} {1000 * np.linalg.norm(t - gt.t):8.1f} {add:6.2f}")
    finally:
        stop_process(node_proc)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="replay_frames", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model file (.onnx or .pt) for the node")
    ap.add_argument("--objects", required=True, help="object registry YAML")
    ap.add_argument("--split", required=True, help="BOP split folder with labelled scenes (e.g. data/lm-lite/test)")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args(argv)
    for name in ("model", "objects", "split"):
        if not Path(getattr(args, name)).exists():
            print(f"replay_frames: --{name} {getattr(args, name)} does not exist", file=sys.stderr)
            return 2
    return replay(args.model, args.objects, args.split, args.frames)


if __name__ == "__main__":
    sys.exit(main())
