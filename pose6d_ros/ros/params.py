"""The nodes' parameters: one frozen dataclass per node, each field declared once with its type,
default, description and range or choices (:func:`param`).

The record is the schema: :func:`schema` reads the :class:`ParamSpec` s back from the fields, for
:func:`declare_parameters`, :func:`validate_params`, ``docs/ros-interface.md`` and ``config/*.yaml``
(the last two checked against it by tests). Validation is plain Python, so the rules are testable
without a node; a bad value stops the node at start-up with a message naming the parameter.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

P = TypeVar("P")


class ParameterError(ValueError):
    """A parameter value that the node cannot run with; the text names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its default (whose type is the parameter's type), description, and the allowed
    ``choices`` or closed ``range``; ``required``: an empty value is refused (a path that must be given)."""

    default: Any
    description: str
    choices: Optional[Tuple[Any, ...]] = None
    range: Optional[Tuple[float, float]] = None
    required: bool = False


_SPEC = "pose6d_ros.param"  # the key of a ParamSpec in a dataclass field's metadata


def param(default: Any, description: str, *, choices: Optional[Tuple[Any, ...]] = None,
          range: Optional[Tuple[float, float]] = None, required: bool = False) -> Any:
    """A field of a node's parameter record: ``default`` with its :class:`ParamSpec` in the field's metadata."""
    return field(default=default, metadata={_SPEC: ParamSpec(default, description, choices, range, required)})


def schema(record: type) -> Dict[str, ParamSpec]:
    """``{name: ParamSpec}`` of a parameter record, in declaration order.

    Raises:
        TypeError: naming the field, if it is not declared with :func:`param`, or if its annotation is
        not the type of its default (validation checks values against the default's type).
    """
    hints = typing.get_type_hints(record)
    out: Dict[str, ParamSpec] = {}
    for f in fields(record):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            raise TypeError(f"{record.__name__}.{f.name}: not declared with param(default, description, ...)")
        if type(spec.default) is not hints[f.name]:
            raise TypeError(f"{record.__name__}.{f.name}: annotated {hints[f.name].__name__} but its default "
                            f"{spec.default!r} is a {type(spec.default).__name__}")
        out[f.name] = spec
    return out


@dataclass(frozen=True)
class EstimatorParams:
    """The estimator node's parameters (``config/estimator.yaml``, node ``pose6d_estimator``)."""

    model: str = param("", "Path to the pose network: an ONNX file from export_onnx, or a .pt checkpoint",
                       required=True)
    objects: str = param("", "Path to the object registry YAML (ids, names, meshes, keypoints)", required=True)
    image_topic: str = param("/camera/image_raw", "sensor_msgs/Image input (base topic with image_transport "
                             "compressed)")
    image_transport: str = param("raw", "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/"
                                 "CompressedImage (jpeg or png) on <image_topic>/compressed",
                                 choices=("raw", "compressed"))
    camera_info_topic: str = param("/camera/camera_info", "sensor_msgs/CameraInfo input")
    detections_topic: str = param("/detections", "vision_msgs/Detection2DArray input")
    poses_topic: str = param("/object_poses", "geometry_msgs/PoseArray output")
    camera_frame: str = param("", "Parent frame of published poses; empty: the image's header.frame_id")
    min_score: float = param(0.3, "Detections scoring below this are ignored", range=(0.0, 1.0))
    min_box_px: float = param(8.0, "Detections whose box's longer side is shorter (pixels) are skipped: too few "
                              "pixels for a pose", range=(0.0, 10000.0))
    min_depth_m: float = param(0.05, "Poses nearer than this (t_z, metres) are not published", range=(0.0, 1e6))
    max_depth_m: float = param(20.0, "Poses farther than this (t_z, metres) are not published", range=(0.0, 1e6))
    device: str = param("cpu", "Inference device", choices=("cpu", "cuda"))
    backend: str = param("auto", "auto: ONNX Runtime for .onnx models, torch for .pt",
                         choices=("auto", "torch", "onnxruntime"))
    num_threads: int = param(1, "CPU threads of torch (intra- and inter-op) and of ONNX Runtime sessions. 1 suits "
                             "a few detections per frame on cores shared with other nodes", range=(1, 64))
    publish_tf: bool = param(True, "Publish TF frames <object>_<k> under the camera frame")
    publish_debug_image: bool = param(False, "Publish ~/debug_image with the projected 3D boxes")
    publish_markers: bool = param(False, "Publish ~/markers (visualization_msgs/MarkerArray) for RViz")
    qos_depth: int = param(5, "History depth of every subscription and publisher", range=(1, 1000))
    qos_reliability: str = param("reliable", "Subscriptions' reliability", choices=("reliable", "best_effort"))
    cache_size: int = param(30, "Images and detection arrays kept (each) while waiting for their partner stamp",
                            range=(1, 10000))
    cache_max_mb: float = param(256.0, "MiB that waiting images and detection arrays may hold together; the oldest "
                                "waiting message is dropped first", range=(0.01, 65536.0))
    sync: str = param("exact", "Pairing of images with detection arrays: exact stamps, or the nearest within "
                      "sync_tolerance_s (for detectors that restamp)", choices=("exact", "approximate"))
    sync_tolerance_s: float = param(0.01, "Largest stamp difference the approximate pairing accepts, seconds",
                                    range=(0.0, 10.0))
    camera_info_wait_s: float = param(0.5, "Longest the first frames wait for a CameraInfo while none has come yet "
                                      "(later frames take the one with their stamp, else the latest); 0: never wait",
                                      range=(0.0, 10.0))
    max_detections: int = param(50, "Detections estimated per frame at most; the lowest scores beyond are skipped",
                                range=(1, 10000))
    diagnostics_period_s: float = param(1.0, "Seconds between two diagnostic_msgs/DiagnosticArray on /diagnostics "
                                        "(and between two checks for silent or unpaired inputs)", range=(0.1, 60.0))
    warn_throttle_s: float = param(4.0, "Minimum seconds between two lines of the same warning kind; occurrences in "
                                   "between are reported when it has passed", range=(0.0, 3600.0))

    def __post_init__(self) -> None:
        if self.min_depth_m >= self.max_depth_m:
            raise ParameterError(f"parameter 'max_depth_m': {self.max_depth_m} must be greater than "
                                 f"min_depth_m = {self.min_depth_m}")


@dataclass(frozen=True)
class DetectorParams:
    """The detector node's parameters (``config/detector.yaml``, node ``pose6d_detector``)."""

    model: str = param("", "Path to the detector checkpoint (.pt) written by train_detector", required=True)
    objects: str = param("", "Path to the object registry YAML the detector was trained on", required=True)
    device: str = param("cpu", "Inference device", choices=("cpu", "cuda"))
    image_topic: str = param("/camera/image_raw", "sensor_msgs/Image input")
    detections_topic: str = param("/detections", "vision_msgs/Detection2DArray output")
    min_score: float = param(0.5, "Detections scoring below this are not published", range=(0.0, 1.0))
    qos_depth: int = param(5, "History depth of the subscription and the publisher", range=(1, 1000))
    qos_reliability: str = param("reliable", "Subscription reliability", choices=("reliable", "best_effort"))
    warn_throttle_s: float = param(4.0, "Minimum seconds between two lines of the same warning kind; occurrences in "
                                   "between are reported when it has passed", range=(0.0, 3600.0))


ESTIMATOR_PARAMS: Dict[str, ParamSpec] = schema(EstimatorParams)
DETECTOR_PARAMS: Dict[str, ParamSpec] = schema(DetectorParams)

#: node name -> its parameter record (the top-level key of its ``config/*.yaml``)
NODE_PARAMS: Dict[str, type] = {"pose6d_estimator": EstimatorParams, "pose6d_detector": DetectorParams}


def validate_params(record: Type[P], values: Dict[str, Any]) -> P:
    """Check every value against the schema of ``record`` and return the typed record.

    A missing value takes its default; an int given for a float becomes a float. Rules between
    parameters live in the record's ``__post_init__`` (``min_depth_m < max_depth_m``).

    Raises:
        ParameterError: naming the parameter, for an unknown name, a wrong type, a value outside
        its range or choices, an empty required value, or a broken rule between parameters.
    """
    specs = schema(record)
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ParameterError(f"unknown parameter(s): {unknown}")
    out: Dict[str, Any] = {}
    for name, spec in specs.items():
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
        if spec.required and not value:
            raise ParameterError(f"parameter '{name}': a path is required")
        out[name] = value
    return record(**out)


def declare_parameters(node, record: type) -> Dict[str, Any]:
    """Declare every parameter of ``record`` 's schema on the rclpy ``node``; returns their values by name.

    Dynamically typed: rclpy would fix each parameter's type from its default and refuse an int given
    for a double (``-p min_score:=1``) with ``InvalidParameterTypeException``, before
    :func:`validate_params` could take it as 1.0. Types are checked there instead, naming the parameter.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    specs = schema(record)
    for name, spec in specs.items():
        node.declare_parameter(name, spec.default,
                               ParameterDescriptor(description=spec.description, dynamic_typing=True))
    return {name: node.get_parameter(name).value for name in specs}


def validate(values: Dict[str, Any]) -> EstimatorParams:
    """The estimator node's parameters as a typed record."""
    return validate_params(EstimatorParams, values)


def validate_detector_params(values: Dict[str, Any]) -> DetectorParams:
    """The detector node's parameters as a typed record."""
    return validate_params(DetectorParams, values)
