"""The estimator node's parameters: one validated schema (type, default, description, range).

`config/estimator.yaml` sets them; `validate()` is plain Python so the rules are testable without a
node. A bad value stops the node at start-up with a message naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    choices: Optional[Tuple[Any, ...]] = None
    range: Optional[Tuple[float, float]] = None


ESTIMATOR_PARAMS: Dict[str, ParamSpec] = {
    "model": ParamSpec("", "Path to the pose network: an ONNX file from export_onnx, or a .pt checkpoint"),
    "objects": ParamSpec("", "Path to the object registry YAML (ids, names, meshes, keypoints)"),
    "image_topic": ParamSpec("/camera/image_raw", "sensor_msgs/Image input (base topic with image_transport "
                             "compressed)"),
    "image_transport": ParamSpec("raw", "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/"
                                 "CompressedImage (jpeg or png) on <image_topic>/compressed",
                                 choices=("raw", "compressed")),
    "camera_info_topic": ParamSpec("/camera/camera_info", "sensor_msgs/CameraInfo input"),
    "detections_topic": ParamSpec("/detections", "vision_msgs/Detection2DArray input"),
    "poses_topic": ParamSpec("/object_poses", "geometry_msgs/PoseArray output"),
    "camera_frame": ParamSpec("", "Parent frame of published poses; empty: the image's header.frame_id"),
    "min_score": ParamSpec(0.3, "Detections scoring below this are ignored", range=(0.0, 1.0)),
    "min_box_px": ParamSpec(8.0, "Detections whose box's longer side is shorter (pixels) are skipped: too few "
                            "pixels for a pose", range=(0.0, 10000.0)),
    "min_depth_m": ParamSpec(0.05, "Poses nearer than this (t_z, metres) are not published", range=(0.0, 1e6)),
    "max_depth_m": ParamSpec(20.0, "Poses farther than this (t_z, metres) are not published", range=(0.0, 1e6)),
    "device": ParamSpec("cpu", "Inference device", choices=("cpu", "cuda")),
    "backend": ParamSpec("auto", "auto: ONNX Runtime for .onnx models, torch for .pt",
                         choices=("auto", "torch", "onnxruntime")),
    "num_threads": ParamSpec(1, "CPU threads of torch (intra- and inter-op) and of ONNX Runtime sessions. 1 suits "
                             "a few detections per frame on cores shared with other nodes", range=(1, 64)),
    "publish_tf": ParamSpec(True, "Publish TF frames <object>_<k> under the camera frame"),
    "publish_debug_image": ParamSpec(False, "Publish ~/debug_image with the projected 3D boxes"),
    "publish_markers": ParamSpec(False, "Publish ~/markers (visualization_msgs/MarkerArray) for RViz"),
    "qos_depth": ParamSpec(5, "History depth of every subscription and publisher", range=(1, 1000)),
    "qos_reliability": ParamSpec("reliable", "Subscriptions' reliability", choices=("reliable", "best_effort")),
    "cache_size": ParamSpec(30, "Images and detection arrays kept (each) while waiting for their partner stamp",
                            range=(1, 10000)),
    "cache_max_mb": ParamSpec(256.0, "MiB that waiting images and detection arrays may hold together; the oldest "
                              "waiting message is dropped first", range=(0.01, 65536.0)),
    "sync": ParamSpec("exact", "Pairing of images with detection arrays: exact stamps, or the nearest within "
                      "sync_tolerance_s (for detectors that restamp)", choices=("exact", "approximate")),
    "sync_tolerance_s": ParamSpec(0.01, "Largest stamp difference the approximate pairing accepts, seconds",
                                  range=(0.0, 10.0)),
    "camera_info_wait_s": ParamSpec(0.5, "Longest a frame waits for the CameraInfo with its stamp (when none has "
                                    "come yet, or the CameraInfo stream is stamped like the images); 0: never wait",
                                    range=(0.0, 10.0)),
    "max_detections": ParamSpec(50, "Detections estimated per frame at most; the lowest scores beyond are skipped",
                                range=(1, 10000)),
    "diagnostics_period_s": ParamSpec(1.0, "Seconds between two diagnostic_msgs/DiagnosticArray on /diagnostics "
                                      "(and between two checks for silent or unpaired inputs)", range=(0.1, 60.0)),
    "warn_throttle_s": ParamSpec(4.0, "Minimum seconds between two lines of the same warning kind; occurrences in "
                                 "between are reported when it has passed", range=(0.0, 3600.0)),
}


@dataclass(frozen=True)
class EstimatorParams:
    model: str
    objects: str
    image_topic: str
    image_transport: str
    camera_info_topic: str
    detections_topic: str
    poses_topic: str
    camera_frame: str
    min_score: float
    min_box_px: float
    min_depth_m: float
    max_depth_m: float
    device: str
    backend: str
    num_threads: int
    publish_tf: bool
    publish_debug_image: bool
    publish_markers: bool
    qos_depth: int
    qos_reliability: str
    cache_size: int
    cache_max_mb: float
    sync: str
    sync_tolerance_s: float
    camera_info_wait_s: float
    max_detections: int
    diagnostics_period_s: float
    warn_throttle_s: float


class ParameterError(ValueError):
    """A parameter value that the node cannot run with; the text names the parameter."""


def validate_schema(schema: Dict[str, ParamSpec], values: Dict[str, Any], record: type,
                    required_paths: Tuple[str, ...] = ("model", "objects")):
    """Check every value against ``schema`` and return the typed ``record`` dataclass.

    Raises:
        ParameterError: naming the parameter, for an unknown name, a wrong type, a value outside
        its range or choices, or an empty required path.
    """
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ParameterError(f"unknown parameter(s): {unknown}")
    out: Dict[str, Any] = {}
    for name, spec in schema.items():
        value = values.get(name, spec.default)
        kind = type(spec.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(f"parameter '{name}': expected {kind.__name__}, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise ParameterError(f"parameter '{name}': {value!r} is not one of {list(spec.choices)}")
        if spec.range is not None and not (spec.range[0] <= value <= spec.range[1]):
            raise ParameterError(f"parameter '{name}': {value!r} is outside [{spec.range[0]}, {spec.range[1]}]")
        out[name] = value
    for name in required_paths:
        if not out[name]:
            raise ParameterError(f"parameter '{name}': a path is required")
    return record(**{f.name: out[f.name] for f in fields(record)})


def declare_parameters(node, schema: Dict[str, ParamSpec]) -> Dict[str, Any]:
    """Declare every parameter of ``schema`` on the rclpy ``node``; returns their values by name.

    Dynamically typed: rclpy would fix each parameter's type from its default and refuse an int given
    for a double (``-p min_score:=1``) with ``InvalidParameterTypeException``, before
    :func:`validate_schema` could take it as 1.0. Types are checked there instead, naming the parameter.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    for name, spec in schema.items():
        node.declare_parameter(name, spec.default,
                               ParameterDescriptor(description=spec.description, dynamic_typing=True))
    return {name: node.get_parameter(name).value for name in schema}


def validate(values: Dict[str, Any]) -> EstimatorParams:
    """The estimator node's parameters (`ESTIMATOR_PARAMS`) as a typed record."""
    params = validate_schema(ESTIMATOR_PARAMS, values, EstimatorParams)
    if params.min_depth_m >= params.max_depth_m:
        raise ParameterError(f"parameter 'max_depth_m': {params.max_depth_m} must be greater than "
                             f"min_depth_m = {params.min_depth_m}")
    return params
