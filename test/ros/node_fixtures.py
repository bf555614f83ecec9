"""Frames, a registry and a model for the estimator-node tests (made on the fly, nothing downloaded).

Frames come from the simulated real domain (pyrender, an independent renderer); detections are the
GT visible boxes. The model is `test/fixtures/` 's trained one when present, else a random one,
which still checks the ROS plumbing (the node must equal a direct `Estimator` call).
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGISTRY_YAML = ROOT / "config" / "objects_lm_lite.yaml"
TRAINED_MODEL = ROOT / "test" / "fixtures" / "lm_lite_demo.onnx"
#: Node parameters for the tests that compare poses: the random stand-in model (used when the trained
#: one is absent) collapses its keypoints and puts every object 200-1300 m away, past max_depth_m.
POSE_PARAMS = {} if TRAINED_MODEL.is_file() else {"max_depth_m": 1e5}


@dataclass
class Frame:
    rgb: np.ndarray
    K: np.ndarray
    obj_ids: List[int]
    poses: np.ndarray  # (N, 4, 4)
    boxes: List[tuple]  # GT visible boxes, (x0, y0, x1, y1) continuous edges


def make_frames(registry, obj_ids, n_per_object: int, seed: int = 7, width: int = 320, height: int = 240):
    from pose6d_ros.data.simreal import RealDomainConfig, RealRenderer, sample_frames

    K = np.array([[286.0, 0.0, 161.0], [0.0, 287.0, 121.0], [0.0, 0.0, 1.0]])
    cfg = RealDomainConfig(width=width, height=height, K=K, object_px=(60.0, 90.0), clutter=(0, 1),
                           occlusion_prob=0.0)
    renderer = RealRenderer(registry, cfg, seed=seed)
    frames = []
    try:
        for oid in obj_ids:
            for spec in sample_frames(registry, oid, range(n_per_object), cfg, seed):
                out = renderer.render(spec)
                boxes = []
                for m in out.masks_visib:
                    ys, xs = np.nonzero(m)
                    boxes.append((xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5) if len(xs) else None)
                keep = [k for k, b in enumerate(boxes) if b is not None]
                frames.append(Frame(out.rgb, K, [spec.obj_ids[k] for k in keep], spec.poses[keep],
                                    [boxes[k] for k in keep]))
    finally:
        renderer.close()
    return frames


def make_model(registry, obj_ids, path: pathlib.Path) -> pathlib.Path:
    if TRAINED_MODEL.is_file():
        return TRAINED_MODEL
    import torch

    from pose6d_ros.models import ModelCard, PoseNet
    from pose6d_ros.runtime.onnx_export import export_onnx

    torch.manual_seed(0)
    net = PoseNet(backbone="resnet18", num_objects=len(obj_ids), crop_size=64).eval()
    card = ModelCard.for_model(net, registry, obj_ids)
    return export_onnx(net, card, path, exporter="torchscript")  # the fast exporter: this model is a stand-in


def node_command(*ros_args: str) -> List[str]:
    exe = shutil.which("estimator_node")
    cmd = [exe] if exe else [sys.executable, "-m", "pose6d_ros.ros.estimator_node"]
    return cmd + ["--ros-args", "--params-file", str(ROOT / "config" / "estimator.yaml"), *ros_args]


class NodeProcess:
    """The estimator node as a real process (the installed console script)."""

    def __init__(self, *ros_args: str, log_path: pathlib.Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(node_command(*ros_args), stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# -- messages and graph helpers shared by the node tests -----------------------------------------------

def stamp(k: int, nanosec: int = 17):
    from builtin_interfaces.msg import Time

    return Time(sec=1000 + k, nanosec=nanosec)


def camera_info_msg(frame: Frame, stamp_msg, frame_id: str = "camera_optical"):
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=frame.rgb.shape[1], height=frame.rgb.shape[0], distortion_model="plumb_bob")
    info.header.stamp = stamp_msg
    info.header.frame_id = frame_id
    info.k = [float(v) for v in frame.K.reshape(-1)]
    info.d = [0.0] * 5
    return info


def input_publishers(node, image_topic: str = "/camera/image_raw", camera_info_topic: str = "/camera/camera_info",
                     detections_topic: str = "/detections"):
    """(image, camera_info, detections) publishers on the node's default topics."""
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray

    return (node.create_publisher(Image, image_topic, 10),
            node.create_publisher(CameraInfo, camera_info_topic, 10),
            node.create_publisher(Detection2DArray, detections_topic, 10))


def frame_messages(frame: Frame, k: int, registry, det_stamp=None):
    """(Image bgr8, Detection2DArray, core detections) of one frame, both stamped ``stamp(k)``
    unless ``det_stamp`` restamps the detections."""
    from std_msgs.msg import Header

    from pose6d_ros.ros import conversions as conv

    header = Header(stamp=stamp(k), frame_id="camera_optical")
    det_header = Header(stamp=det_stamp if det_stamp is not None else stamp(k), frame_id="camera_optical")
    dets = [conv.Detection(class_id=registry.get(oid).name, box=box, score=0.9)
            for oid, box in zip(frame.obj_ids, frame.boxes)]
    return conv.rgb_to_image(frame.rgb, header, "bgr8"), conv.detection2d_array_msg(det_header, dets), dets


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def wait_subscribed(pub, timeout: float = 60.0) -> bool:
    """True once ``pub`` sees a subscriber (the node is up and discovered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pub.get_subscription_count() == 0:
        time.sleep(0.1)
    return pub.get_subscription_count() > 0


def all_finite_pose_array(msg) -> bool:
    vals = [v for p in msg.poses for v in (p.position.x, p.position.y, p.position.z, p.orientation.x,
                                            p.orientation.y, p.orientation.z, p.orientation.w)]
    return all(math.isfinite(v) for v in vals)


def node_params(model, **extra):
    """``rclpy.parameter.Parameter`` overrides for an in-process ``EstimatorNode``."""
    from rclpy.parameter import Parameter

    values = {"model": str(model), "objects": str(REGISTRY_YAML), **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


class InProcessNode:
    """An ``EstimatorNode`` built in this process and spun by ``spinner`` (faster to start than a
    process; the graph, the messages and the node code are the same), with collectors (``Collector``:
    the conftest fixture ``collector``) of its outputs and its log lines (``/rosout``)."""

    def __init__(self, ros_context, spinner, Collector, model, **params):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from rcl_interfaces.msg import Log
        from rclpy.node import Node
        from rclpy.qos import QoSProfile
        from vision_msgs.msg import Detection3DArray

        from pose6d_ros.ros.estimator_node import EstimatorNode

        self.test_node = spinner.add(Node("test_driver", context=ros_context))
        self.poses = Collector(self.test_node, PoseArray, "/object_poses")
        self.det3d = Collector(self.test_node, Detection3DArray, "/pose6d_estimator/detections")
        self.diagnostics = Collector(self.test_node, DiagnosticArray, "/diagnostics")
        self.rosout = Collector(self.test_node, Log, "/rosout", QoSProfile(depth=1000))
        self.pub_img, self.pub_info, self.pub_det = input_publishers(self.test_node)
        self.node = spinner.add(EstimatorNode(context=ros_context, parameter_overrides=node_params(model, **params)))
        raw = params.get("image_transport", "raw") == "raw"
        assert (not raw or wait_subscribed(self.pub_img)) and wait_subscribed(self.pub_det) \
            and wait_subscribed(self.pub_info)

    def send_frame(self, frame: Frame, k: int, detections) -> None:
        """camera_info, then (0.1 s later) the rgb image and an array of the core ``detections``, all
        stamped ``stamp(k)``."""
        from std_msgs.msg import Header

        from pose6d_ros.ros import conversions as conv

        header = Header(stamp=stamp(k), frame_id="camera_optical")
        self.pub_info.publish(camera_info_msg(frame, stamp(k)))
        time.sleep(0.1)
        self.pub_img.publish(conv.rgb_to_image(frame.rgb, header))
        self.pub_det.publish(conv.detection2d_array_msg(header, detections))

    def warnings(self) -> List[str]:
        """The node's warning texts so far."""
        return [m.msg for m in self.rosout.messages if m.name == self.node.get_name() and m.level >= 30]

    def statuses(self, suffix: str) -> list:
        """Every ``DiagnosticStatus`` received so far whose name ends with ``suffix``."""
        return [s for m in self.diagnostics.messages for s in m.status if s.name.endswith(suffix)]

    @staticmethod
    def values(status) -> dict:
        return {kv.key: kv.value for kv in status.values}


def direct_estimate(registry, model, frame: Frame, detections, **overrides):
    """A direct ``Estimator`` call on ``frame`` with the node's default limits (``ESTIMATOR_PARAMS``),
    the reference the node's output must equal. ``detections``: ``Detection`` records."""
    from pose6d_ros.geometry.camera import CameraModel
    from pose6d_ros.ros.params import ESTIMATOR_PARAMS
    from pose6d_ros.runtime.estimator import Estimator

    d = {k: ESTIMATOR_PARAMS[k].default for k in ("min_score", "min_box_px", "min_depth_m", "max_depth_m")}
    d.update(overrides)
    est = Estimator(str(model), registry, backend="onnxruntime", device="cpu", min_score=d["min_score"],
                    min_box_px=d["min_box_px"], depth_range=(d["min_depth_m"], d["max_depth_m"]))
    cam = CameraModel(K=frame.K, width=frame.rgb.shape[1], height=frame.rgb.shape[0], distortion_model="plumb_bob",
                      D=np.zeros(5))
    return est.estimate(frame.rgb, cam, detections)
