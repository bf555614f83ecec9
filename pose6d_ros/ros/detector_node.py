"""The 2D detector node: sensor_msgs/Image -> vision_msgs/Detection2DArray (class_id = object name).

Each detection array carries its image's header, so the estimator node pairs them by exact stamp.
A bad image (unsupported encoding, wrong size) is skipped with a throttled warning; the node never
dies on input. A missing model, or one trained on objects outside the registry, stops it at
start-up with a clear error and a non-zero exit.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from pose6d_ros.detection.infer import Detector
from pose6d_ros.detection.model import DetectorCheckpointError
from pose6d_ros.registry import ObjectRegistry, RegistryError
from pose6d_ros.ros import conversions as conv
from pose6d_ros.ros.spin import spin_node
from pose6d_ros.ros.diagnostics import FLUSH_PERIOD_S, ThrottledWarnings
from pose6d_ros.ros.params import DetectorParams, ParameterError, declare_parameters, validate_detector_params


class DetectorNode(Node):
    def __init__(self, **kwargs):
        super().__init__("pose6d_detector", **kwargs)
        self.params: DetectorParams = validate_detector_params(declare_parameters(self, DetectorParams))
        p = self.params
        self.registry = ObjectRegistry.from_yaml(p.objects)
        self.detector = Detector.from_file(p.model, p.device, min_score=p.min_score,
                                           expect_names=self.registry.names)
        self.warnings = ThrottledWarnings(self.get_logger(), p.warn_throttle_s)
        self.create_timer(FLUSH_PERIOD_S, self.warnings.flush)
        self.frames_processed = 0
        reliability = ReliabilityPolicy.RELIABLE if p.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        self.create_subscription(Image, p.image_topic, self._on_image, QoSProfile(depth=p.qos_depth,
                                                                                  reliability=reliability))
        self.pub = self.create_publisher(Detection2DArray, p.detections_topic, p.qos_depth)
        self.get_logger().info(f"detector ready: model={p.model} ({self.detector.spec.arch}) device={p.device} "
                               f"classes={list(self.detector.names)}; {p.image_topic} -> {p.detections_topic}")

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = conv.image_to_rgb(msg)
            found = self.detector.detect(rgb)
        except conv.MessageError as e:
            self.warnings.warn("bad_image", f"{e}; image skipped")
            return
        except Exception as e:  # noqa: BLE001 - the node must survive any input
            self.warnings.warn("internal_error", f"{type(e).__name__}: {e}; image skipped")
            return
        self.pub.publish(conv.detection2d_array_msg(msg.header, found))
        self.frames_processed += 1


def main(args=None) -> int:
    # start-up errors: bad parameters, a missing or mismatched model
    return spin_node(DetectorNode, "pose6d_detector", (ParameterError, DetectorCheckpointError, RegistryError, FileNotFoundError), args)


if __name__ == "__main__":
    sys.exit(main())
