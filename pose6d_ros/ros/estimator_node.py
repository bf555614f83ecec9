"""The pose estimator node: Image + CameraInfo + Detection2DArray -> /object_poses, ~/detections, /tf.

Images and detection arrays pair by stamp (exact, or nearest within a tolerance) through caches
bounded by count and bytes (``ros.pairing``). Anything wrong with one message or one detection is
skipped with a throttled warning and counted; the node itself never dies on input and never publishes
a non-finite number. When it publishes nothing it says why: every ``diagnostics_period_s`` it
publishes ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics`` (``ros.diagnostics``) and warns
about inputs without a partner, the stamp offset it sees, and dropped or skipped frames. A missing or
mismatched model stops it at start-up with one line and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from pose6d_ros.geometry.camera import CameraModel, check_plausible
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.ros import conversions as conv
from pose6d_ros.ros.diagnostics import (FLUSH_PERIOD_S, INPUTS, NODE_DETECTION_REASONS, Counters, ThrottledWarnings,
                                        build_report, report_snapshot, to_message)
from pose6d_ros.ros.pairing import CameraSync, FramePairer, Pair, stamp_ns
from pose6d_ros.ros.params import EstimatorParams, ParameterError, declare_parameters, validate
from pose6d_ros.ros.spin import one_line, spin_node
from pose6d_ros.runtime.backends import check_cuda, resolve_backend, set_thread_counts
from pose6d_ros.runtime.detection import Detection
from pose6d_ros.runtime.estimator import SKIP_REASONS, Estimator
from pose6d_ros.runtime.visualize import draw_boxes

#: Bytes a waiting detection array is counted for: its header plus about one Detection2D per entry.
_DETECTION_BYTES = 256


class EstimatorNode(Node):
    def __init__(self, **kwargs):
        super().__init__("pose6d_estimator", **kwargs)
        self.params: EstimatorParams = validate(declare_parameters(self, EstimatorParams))
        p = self.params
        try:
            self.registry = ObjectRegistry.from_yaml(p.objects)
        except yaml.YAMLError as e:
            raise ParameterError(f"parameter 'objects': {p.objects} is not valid YAML: {one_line(e)}") from e
        if p.device == "cuda":
            try:
                check_cuda(resolve_backend(p.model, p.backend), name="parameter 'device'")
            except ValueError as e:
                raise ParameterError(str(e)) from e
        set_thread_counts(p.num_threads)
        self.estimator = Estimator(p.model, self.registry, backend=p.backend, device=p.device,
                                   min_score=p.min_score, intra_op_threads=p.num_threads,
                                   min_box_px=p.min_box_px, depth_range=(p.min_depth_m, p.max_depth_m))
        self._boxes = {o.id: _box_of(o.keypoints) for o in self.registry}  # (size, centre) per object
        self.warnings = ThrottledWarnings(self.get_logger(), p.warn_throttle_s)
        self.create_timer(FLUSH_PERIOD_S, self.warnings.flush)
        self.cameras: CameraSync[CameraModel] = CameraSync(max_count=64)
        self._held: List[Tuple[float, Pair]] = []  # (deadline, frame) waiting for their camera_info
        self.counters = Counters()
        self.pairer = FramePairer(p.sync, round(p.sync_tolerance_s * 1e9), p.cache_size, int(p.cache_max_mb * 2**20))
        self._detection_reasons = [*SKIP_REASONS, *NODE_DETECTION_REASONS]

        reliability = ReliabilityPolicy.RELIABLE if p.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        sub_qos = QoSProfile(depth=p.qos_depth, reliability=reliability)
        subs = {
            "image": (self.create_subscription(CompressedImage, f"{p.image_topic}/compressed",
                                               self._guard(self._on_image), sub_qos)
                      if p.image_transport == "compressed" else
                      self.create_subscription(Image, p.image_topic, self._guard(self._on_image), sub_qos)),
            "camera_info": self.create_subscription(CameraInfo, p.camera_info_topic,
                                                    self._guard(self._on_camera_info), sub_qos),
            "detections": self.create_subscription(Detection2DArray, p.detections_topic,
                                                   self._guard(self._on_detections), sub_qos),
        }
        self.topics = {k: subs[k].topic_name for k in INPUTS}  # after remapping
        self.pub_poses = self.create_publisher(PoseArray, p.poses_topic, p.qos_depth)
        self.pub_detections = self.create_publisher(Detection3DArray, "~/detections", p.qos_depth)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", 100) if p.publish_tf else None
        self.pub_debug = self.create_publisher(Image, "~/debug_image", p.qos_depth) if p.publish_debug_image else None
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", p.qos_depth) if p.publish_markers else None
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.hardware_id = f"{p.device}:{os.path.basename(p.model)}"
        self._report_from = (time.monotonic(), report_snapshot(self.counters, self.pairer))
        self.create_timer(p.diagnostics_period_s, self._guard(self._report))
        if p.camera_info_wait_s > 0:
            self.create_timer(min(0.1, p.camera_info_wait_s / 2), self._guard(self._release_expired))
        self.get_logger().info(
            f"pose estimator ready: model={p.model} backend={type(self.estimator.predictor).__name__} "
            f"device={p.device} objects={list(self.registry.names)}; listening on {self.topics['image']}, "
            f"{self.topics['camera_info']}, {self.topics['detections']} ({p.image_transport} images, {p.sync} "
            f"stamps); publishing "
            f"{self.pub_poses.topic_name}, {self.pub_detections.topic_name}, {self.pub_diagnostics.topic_name}")

    # -- callbacks ---------------------------------------------------------------------------
    def _guard(self, callback):
        """Wrap a callback so that no exception, whatever its cause, escapes into the executor."""

        def guarded(*args):
            try:
                callback(*args)
            except conv.MessageError as e:
                self.warnings.warn("bad_message", str(e))
            except Exception as e:  # noqa: BLE001 - the node must survive any input
                self.warnings.warn("internal_error", f"{type(e).__name__}: {e}")

        return guarded

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.counters.received["camera_info"] += 1
        try:
            camera = conv.camera_info_to_model(msg)
            check_plausible(camera)
        except ValueError as e:  # MessageError, or an implausible K
            self.counters.camera_info_rejected += 1
            self.warnings.warn("invalid_camera_info", f"{e}; keeping the previous camera model")
            return
        self.cameras.add(stamp_ns(msg.header.stamp), camera)
        if self._held:
            self._release_held(time.monotonic())

    def _on_image(self, msg) -> None:
        """An ``Image``, or a ``CompressedImage`` with ``image_transport: compressed`` (decoded only
        once paired)."""
        self.counters.received["image"] += 1
        pair = self.pairer.add_image(msg, stamp_ns(msg.header.stamp), len(msg.data), time.monotonic())
        if pair is not None:
            self._on_pair(pair)

    def _on_detections(self, msg: Detection2DArray) -> None:
        self.counters.received["detections"] += 1
        nbytes = _DETECTION_BYTES * (1 + len(msg.detections))
        pair = self.pairer.add_detections(msg, stamp_ns(msg.header.stamp), nbytes, time.monotonic())
        if pair is not None:
            self._on_pair(pair)

    def _release_expired(self) -> None:
        if self._held:
            self._release_held(time.monotonic())

    def _report(self) -> None:
        """Publish /diagnostics and warn about what keeps frames from being published."""
        now = time.monotonic()
        since, previous = self._report_from
        report = build_report(self.get_name(), self.topics, self.counters, previous, now - since, self.pairer, now,
                              self.cameras.latest is not None, len(self._held), self._detection_reasons,
                              self.params.sync_tolerance_s, self.pairer.max_bytes)
        self._report_from = (now, report_snapshot(self.counters, self.pairer))
        self.pub_diagnostics.publish(to_message(report, self.get_clock().now().to_msg(), self.hardware_id))
        for kind, text in report.warnings:
            self.warnings.warn(kind, text)

    # -- one frame -----------------------------------------------------------------------------
    def _on_pair(self, pair: Pair) -> None:
        """Process a frame with its camera model, or hold it while no CameraInfo has come yet:
        at most ``camera_info_wait_s``, at most ``cache_size`` frames, and within ``cache_max_mb``
        together with the waiting messages (the oldest held frame goes on first)."""
        camera, wait = self.cameras.match(pair.stamp)
        if wait and self.params.camera_info_wait_s > 0:
            self._held.append((pair.ready + self.params.camera_info_wait_s, pair))
            self.counters.frames_held += 1
            while len(self._held) > 1 and (len(self._held) > self.params.cache_size or self._held_bytes()
                                           + self.pairer.nbytes > self.pairer.max_bytes):
                _, oldest = self._held.pop(0)
                self._process(oldest, self.cameras.give_up())
            return
        self._process(pair, self.cameras.give_up() if wait else camera)

    def _held_bytes(self) -> int:
        return sum(pair.nbytes for _, pair in self._held)

    def _release_held(self, now: float) -> None:
        """Process the held frames whose camera model has come, or whose wait is over (with the latest
        model, or skipped without one); keep the others."""
        held, self._held = self._held, []
        for deadline, pair in held:
            camera, wait = self.cameras.match(pair.stamp)
            if wait and deadline > now:
                self._held.append((deadline, pair))
            else:
                self._process(pair, self.cameras.give_up() if wait else camera)

    def _process(self, pair: Pair, camera: Optional[CameraModel]) -> None:
        start = time.monotonic()
        try:
            reason = self._frame(pair, camera)
        except Exception as e:  # noqa: BLE001 - the node must survive any input
            reason = "internal_error"
            self.warnings.warn("internal_error", f"{type(e).__name__}: {e}; frame skipped")
        end = time.monotonic()
        self.counters.busy_s += end - start
        if reason:
            self.counters.frames_skipped[reason] += 1
        else:
            self.counters.frames_processed += 1
            self.counters.latencies.append(end - pair.ready)

    def _frame(self, pair: Pair, camera: Optional[CameraModel]) -> Optional[str]:
        """Estimate and publish one frame; returns the reason it was skipped (``FRAME_SKIP_REASONS``), or None."""
        image_msg, det_msg = pair.image, pair.detections
        if camera is None:
            self.warnings.warn("no_camera_info", f"no valid camera_info on {self.topics['camera_info']} "
                                                 f"(waited {self.params.camera_info_wait_s:g} s); frame skipped")
            return "no_camera_info"
        compressed = isinstance(image_msg, CompressedImage)
        # A raw image's size is known before decoding it; a compressed one's only after.
        if not compressed and not self._size_matches(image_msg.width, image_msg.height, camera):
            return "camera_info_mismatch"
        try:
            rgb = conv.compressed_image_to_rgb(image_msg) if compressed else conv.image_to_rgb(image_msg)
        except conv.MessageError as e:
            self.warnings.warn("bad_image", f"{e}; frame skipped")
            return "bad_image"
        if compressed and not self._size_matches(rgb.shape[1], rgb.shape[0], camera):
            return "camera_info_mismatch"
        detections = self._detections(det_msg)
        estimates = self.estimator.estimate(rgb, camera, detections)
        skipped = Counter(est.reason for est in estimates if not est.ok)
        self.counters.detections_skipped.update(skipped)
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
                self.counters.detections_skipped["non_finite_pose"] += 1
                self.warnings.warn("non_finite_pose", f"{est.object_name}: non-finite pose dropped")
                continue
            k = per_class.get(est.object_name, 0)
            per_class[est.object_name] = k + 1
            size, centre = self._boxes[est.object_id]
            items.append(conv.PublishedPose(f"{est.object_name}_{k}", str(est.class_id), est.score, est.R, est.t,
                                            size, centre))
        self.pub_poses.publish(conv.pose_array_msg(header, [(i.R, i.t) for i in items]))
        self.pub_detections.publish(conv.detection3d_array_msg(header, items))
        if self.pub_tf is not None and items:
            self.pub_tf.publish(conv.tf_message(header, [(i.name, i.R, i.t) for i in items]))
        if self.pub_markers is not None:
            self.pub_markers.publish(conv.marker_array_msg(header, items))
        if self.pub_debug is not None:
            self.pub_debug.publish(conv.rgb_to_image(draw_boxes(rgb, camera, estimates, self.registry), header))
        self.counters.detections_estimated += len(items)
        return None

    def _size_matches(self, width: int, height: int, camera: CameraModel) -> bool:
        if (width, height) == (camera.width, camera.height):
            return True
        self.warnings.warn("camera_info_mismatch", f"image is {width}x{height} but camera_info says "
                                                   f"{camera.width}x{camera.height}; frame skipped")
        return False

    def _detections(self, det_msg: Detection2DArray) -> List[Detection]:
        """The array's detections in core form: at most ``max_detections`` (the highest scores, in
        their order in the array); malformed ones are skipped and counted."""
        entries = det_msg.detections
        cap = self.params.max_detections
        if len(entries) > cap:
            # Best hypothesis score per detection; NaN or no hypothesis ranks last.
            scores = np.array([max((r.hypothesis.score for r in d.results), default=-np.inf) for d in entries],
                              dtype=np.float64)
            scores[~np.isfinite(scores)] = -np.inf
            keep = np.sort(np.argsort(-scores, kind="stable")[:cap])
            extra = len(entries) - cap
            self.counters.detections_skipped["too_many_detections"] += extra
            self.warnings.warn("too_many_detections", f"{len(entries)} detections in one array; the {extra} "
                                                      f"lowest-scoring beyond max_detections = {cap} skipped")
            indexed = [(int(i), entries[int(i)]) for i in keep]
        else:
            indexed = list(enumerate(entries))
        detections: List[Detection] = []
        for i, det in indexed:
            try:
                detections.append(conv.detection_from_msg(det, i))
            except conv.MessageError as e:
                self.counters.detections_skipped["bad_detection"] += 1
                self.warnings.warn("bad_detection", str(e))
        return detections


def _box_of(keypoints) -> Tuple[Tuple[float, float, float], np.ndarray]:
    """``(size, centre)`` of the axis-aligned model-frame box of an object's 8 corner keypoints, metres."""
    corners = np.asarray(keypoints[:8], dtype=np.float64)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return tuple(float(v) for v in hi - lo), (hi + lo) / 2


def main(args=None) -> int:
    # start-up errors: bad parameters (ParameterError), a missing file (OSError), a corrupt model
    # (ModelLoadError) or one that does not match the registry (ValueError), a bad registry (RegistryError)
    return spin_node(EstimatorNode, "pose6d_estimator", (ValueError, OSError, KeyError), args)


if __name__ == "__main__":
    sys.exit(main())
