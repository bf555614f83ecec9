"""The pose estimator node: Image + CameraInfo + Detection2DArray -> /object_poses, ~/detections, /tf.

Images and detection arrays pair by exact stamp through a bounded cache. Anything wrong with one
message or one detection is skipped with a throttled warning; the node itself never dies on input
and never publishes a non-finite number. A missing or mismatched model stops it at start-up with
a clear error and a non-zero exit.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.ros import conversions as conv
from pose6d_ros.ros.spin import spin_node
from pose6d_ros.ros.params import ESTIMATOR_PARAMS, EstimatorParams, ParameterError, validate
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime.backends import set_thread_counts
from pose6d_ros.runtime.estimator import SKIP_REASONS, Estimator
from pose6d_ros.runtime.visualize import draw_boxes


class ThrottledWarnings:
    """One warning per kind per `period` seconds; repeats are counted and reported with the next."""

    def __init__(self, logger, period: float):
        self._logger, self._period = logger, period
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}
        self.counts: Dict[str, int] = {}

    def warn(self, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -1e18) < self._period:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        extra = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        self._logger.warning(f"[{kind}] {text}" + (f" ({extra} more since the last warning)" if extra else ""))


class EstimatorNode(Node):
    def __init__(self, **kwargs):
        super().__init__("pose6d_estimator", **kwargs)
        for name, spec in ESTIMATOR_PARAMS.items():
            self.declare_parameter(name, spec.default, ParameterDescriptor(description=spec.description))
        values = {name: self.get_parameter(name).value for name in ESTIMATOR_PARAMS}
        self.params: EstimatorParams = validate(values)
        p = self.params
        self.registry = ObjectRegistry.from_yaml(p.objects)
        set_thread_counts(p.num_threads)
        self.estimator = Estimator(p.model, self.registry, backend=p.backend, device=p.device,
                                   min_score=p.min_score, intra_op_threads=p.num_threads)
        self.warnings = ThrottledWarnings(self.get_logger(), p.warn_throttle_s)
        self.camera: Optional[CameraModel] = None
        self._images: "OrderedDict[Tuple[int, int], Image]" = OrderedDict()
        self._detections: "OrderedDict[Tuple[int, int], Detection2DArray]" = OrderedDict()
        self.frames_processed = 0

        reliability = ReliabilityPolicy.RELIABLE if p.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        sub_qos = QoSProfile(depth=p.qos_depth, reliability=reliability)
        self.create_subscription(Image, p.image_topic, self._guard(self._on_image), sub_qos)
        self.create_subscription(CameraInfo, p.camera_info_topic, self._guard(self._on_camera_info), sub_qos)
        self.create_subscription(Detection2DArray, p.detections_topic, self._guard(self._on_detections), sub_qos)
        self.pub_poses = self.create_publisher(PoseArray, p.poses_topic, p.qos_depth)
        self.pub_detections = self.create_publisher(Detection3DArray, "~/detections", p.qos_depth)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", 100) if p.publish_tf else None
        self.pub_debug = self.create_publisher(Image, "~/debug_image", p.qos_depth) if p.publish_debug_image else None
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", p.qos_depth) if p.publish_markers else None
        self.get_logger().info(
            f"pose estimator ready: model={p.model} backend={type(self.estimator.predictor).__name__} device={p.device} "
            f"objects={list(self.registry.names)}; listening on {p.image_topic}, "
            f"{p.camera_info_topic}, {p.detections_topic}")

    # -- callbacks ---------------------------------------------------------------------------
    def _guard(self, callback):
        """Wrap a callback so that no exception, whatever its cause, escapes into the executor."""

        def guarded(msg):
            try:
                callback(msg)
            except conv.MessageError as e:
                self.warnings.warn("bad_message", str(e))
            except Exception as e:  # noqa: BLE001 - the node must survive any input
                self.warnings.warn("internal_error", f"{type(e).__name__}: {e}")

        return guarded

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.camera = conv.camera_info_to_model(msg)
        except conv.MessageError as e:
            self.warnings.warn("invalid_camera_info", f"{e}; keeping the previous camera model")

    def _on_image(self, msg: Image) -> None:
        key = conv.stamp_key(msg.header.stamp)
        if key in self._detections:
            self._process(msg, self._detections.pop(key))
        else:
            self._remember(self._images, key, msg)

    def _on_detections(self, msg: Detection2DArray) -> None:
        key = conv.stamp_key(msg.header.stamp)
        if key in self._images:
            self._process(self._images.pop(key), msg)
        else:
            self._remember(self._detections, key, msg)

    def _remember(self, cache: OrderedDict, key, msg) -> None:
        cache[key] = msg
        while len(cache) > self.params.cache_size:
            cache.popitem(last=False)

    # -- one frame -----------------------------------------------------------------------------
    def _process(self, image_msg: Image, det_msg: Detection2DArray) -> None:
        if self.camera is None:
            self.warnings.warn("no_camera_info", "no valid camera_info received yet; frame skipped")
            return
        if (image_msg.width, image_msg.height) != (self.camera.width, self.camera.height):
            self.warnings.warn("camera_info_mismatch",
                               f"image is {image_msg.width}x{image_msg.height} but camera_info says "
                               f"{self.camera.width}x{self.camera.height}; frame skipped")
            return
        rgb = conv.image_to_rgb(image_msg)
        detections: List[conv.Detection] = []
        for i, det in enumerate(det_msg.detections):
            try:
                detections.append(conv.detection_from_msg(det, i))
            except conv.MessageError as e:
                self.warnings.warn("bad_detection", str(e))
        estimates = self.estimator.estimate(rgb, self.camera, [(d.class_id, d.box, d.score) for d in detections])
        for est in estimates:
            if not est.ok and est.reason != "low_score":
                self.warnings.warn(est.reason, f"detection {est.detection_index} (class '{est.class_id}') skipped: "
                                   f"{SKIP_REASONS.get(est.reason, est.reason)}")
        header = image_msg.header
        if self.params.camera_frame:
            header.frame_id = self.params.camera_frame
        items: List[conv.PublishedPose] = []
        per_class: Dict[str, int] = {}
        for est in estimates:
            if not est.ok:
                continue
            if not (np.all(np.isfinite(est.R)) and np.all(np.isfinite(est.t)) and np.isfinite(est.score)):
                self.warnings.warn("non_finite_pose", f"{est.object_name}: non-finite pose dropped")
                continue
            k = per_class.get(est.object_name, 0)
            per_class[est.object_name] = k + 1
            corners = np.asarray(self.registry.get(est.object_id).keypoints[:8])
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            items.append(conv.PublishedPose(f"{est.object_name}_{k}", str(est.class_id), est.score, est.R, est.t,
                                            tuple(float(v) for v in hi - lo), (hi + lo) / 2))
        self.pub_poses.publish(conv.pose_array_msg(header, [(i.R, i.t) for i in items]))
        self.pub_detections.publish(conv.detection3d_array_msg(header, items))
        if self.pub_tf is not None and items:
            self.pub_tf.publish(conv.tf_message(header, [(i.name, i.R, i.t) for i in items]))
        if self.pub_markers is not None:
            self.pub_markers.publish(conv.marker_array_msg(header, items))
        if self.pub_debug is not None:
            self.pub_debug.publish(conv.rgb_to_image(draw_boxes(rgb, self.camera, estimates, self.registry), header))
        self.frames_processed += 1


def main(args=None) -> int:
    # start-up errors: bad parameters, a missing or mismatched model
    return spin_node(EstimatorNode, "pose6d_estimator", (ParameterError, ValueError, OSError, KeyError), args)


if __name__ == "__main__":
    sys.exit(main())
