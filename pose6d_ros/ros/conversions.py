"""Every conversion between ROS 2 messages and core types, in one module.

Functions raise `MessageError` (a ValueError naming the message field) on bad input; nodes catch it
and skip the message with a throttled warning.

Libraries first: images go through cv_bridge where it is installed (any ROS distribution), else
through the core decoder; rotation matrices become quaternions through tf_transformations where it
is installed, else through transforms3d (the same Gohlke code that tf_transformations wraps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from pose6d_ros.data.images import ImageDecodeError, compressed_to_rgb, raw_to_rgb
from pose6d_ros.geometry.camera import CameraModel
from pose6d_ros.runtime.detection import Detection

try:  # a ROS distribution's package; absent from PyPI (and so from CI)
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None

try:  # ros-<distro>-tf-transformations; (x, y, z, w) from a 4x4 matrix
    from tf_transformations import quaternion_from_matrix as _tf_quaternion_from_matrix
except ImportError:
    _tf_quaternion_from_matrix = None
from transforms3d.quaternions import mat2quat  # (w, x, y, z) from a 3x3 matrix

_BRIDGE = CvBridge() if CvBridge is not None else None

class MessageError(ValueError):
    """A message that cannot be converted; the text names the offending field."""


def stamp_key(stamp) -> Tuple[int, int]:
    """A hashable key of a `builtin_interfaces/Time`, for exact-stamp pairing."""
    return int(stamp.sec), int(stamp.nanosec)


def image_to_rgb(msg) -> np.ndarray:
    """`sensor_msgs/Image` -> `(H, W, 3)` uint8 RGB, through cv_bridge when it is installed.

    Without cv_bridge, :func:`raw_image_to_rgb` decodes rgb8, bgr8, rgba8, bgra8 and mono8. Raises
    `MessageError` naming the field (encoding, height/width, step or data) otherwise.
    """
    if _BRIDGE is None:
        return raw_image_to_rgb(msg)
    try:
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except Exception as e:  # noqa: BLE001 - cv_bridge raises CvBridgeError, TypeError or ValueError
        raw_image_to_rgb(msg)  # names the field where the core decoder can tell which one is wrong
        raise MessageError(f"Image.encoding: cv_bridge cannot convert '{msg.encoding}' to rgb8: {e}") from e


def raw_image_to_rgb(msg) -> np.ndarray:
    """The fallback of :func:`image_to_rgb`: the core decoder, cv_bridge's behaviour for 8-bit images.

    Like ``CvBridge().imgmsg_to_cv2(msg, "rgb8")``: a row ``step`` wider than the pixels is cropped,
    alpha is dropped, mono8 is replicated into three channels (8-bit data has no endianness).
    """
    try:
        return raw_to_rgb(msg.data, msg.height, msg.width, msg.step, msg.encoding)
    except ImageDecodeError as e:
        raise MessageError(f"Image.{e}") from e


def compressed_image_to_rgb(msg) -> np.ndarray:
    """`sensor_msgs/CompressedImage` (jpeg or png, image_transport's ``compressed``) -> `(H, W, 3)` uint8 RGB.

    Decoded by OpenCV. Raises `MessageError` naming ``CompressedImage.format`` or ``.data``.
    """
    try:
        return compressed_to_rgb(msg.data, msg.format)
    except ImageDecodeError as e:
        raise MessageError(f"CompressedImage.{e}") from e


def rgb_to_image(rgb: np.ndarray, header, encoding: str = "rgb8"):
    """(H, W, 3) uint8 RGB -> `sensor_msgs/Image` (rgb8 or bgr8)."""
    from sensor_msgs.msg import Image

    if encoding not in ("rgb8", "bgr8"):
        raise MessageError(f"encoding: rgb_to_image writes rgb8 or bgr8, not {encoding}")
    pixels = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, int(pixels.shape[1] * 3)
    msg.data = pixels.tobytes()
    return msg


def camera_info_to_model(msg) -> CameraModel:
    """`sensor_msgs/CameraInfo` -> `CameraModel` (K, distortion model and D, size).

    Raises `MessageError` when K is invalid (zero, non-finite, fx or fy <= 0) or D does not fit
    the distortion model.
    """
    k = [float(v) for v in msg.k]
    if not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0 or k[8] == 0:
        raise MessageError(f"CameraInfo.k: invalid intrinsics {k}")
    model = str(msg.distortion_model) or "none"
    d = [float(v) for v in msg.d]
    if model in ("", "none") or not any(d):
        model, d = "none", []
    try:
        return CameraModel.from_camera_info_fields(k, d, model, int(msg.width), int(msg.height))
    except (ValueError, TypeError) as e:
        raise MessageError(f"CameraInfo: {e}") from e


def detection_from_msg(det, index: int = 0) -> Detection:
    """One `vision_msgs/Detection2D` (entry ``index`` of its array) -> `runtime.detection.Detection`
    (best hypothesis; ``class_id`` a string, ``box`` from the centre and size).

    No hypothesis, a non-finite box or score, or a non-positive size raises `MessageError` naming
    `detections[index]`; callers drop only that detection.
    """
    if len(det.results) == 0:
        raise MessageError(f"detections[{index}].results: empty (no class hypothesis)")
    best = max(det.results, key=lambda r: r.hypothesis.score)
    cx, cy = float(det.bbox.center.position.x), float(det.bbox.center.position.y)
    sx, sy = float(det.bbox.size_x), float(det.bbox.size_y)
    score = float(best.hypothesis.score)
    if not np.all(np.isfinite([cx, cy, sx, sy, score])):
        raise MessageError(f"detections[{index}].bbox/score: non-finite value")
    if sx <= 0 or sy <= 0:
        raise MessageError(f"detections[{index}].bbox.size: must be positive, got {sx}x{sy}")
    box = (cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2)
    return Detection(class_id=str(best.hypothesis.class_id), box=box, score=score, detection_id=str(det.id))


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion in ROS order (x, y, z, w), with w >= 0.

    The sign is fixed so that equal rotations publish equal quaternions.
    """
    R = np.asarray(R, dtype=np.float64)
    if _tf_quaternion_from_matrix is not None:
        M = np.eye(4)
        M[:3, :3] = R
        q = np.asarray(_tf_quaternion_from_matrix(M), dtype=np.float64)
    else:
        w, x, y, z = mat2quat(R)
        q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def pose_to_msg(R: np.ndarray, t: np.ndarray):
    """(R, t) in metres -> `geometry_msgs/Pose`."""
    from geometry_msgs.msg import Pose

    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in t)
    qx, qy, qz, qw = matrix_to_quaternion(R)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = float(qx), float(qy), float(qz), float(qw)
    return p


def pose_array_msg(header, poses: Sequence[Tuple[np.ndarray, np.ndarray]]):
    from geometry_msgs.msg import PoseArray

    msg = PoseArray()
    msg.header = header
    msg.poses = [pose_to_msg(R, t) for R, t in poses]
    return msg


@dataclass(frozen=True)
class PublishedPose:
    """What the node publishes for one detection (core -> message boundary record)."""

    name: str
    class_id: str
    score: float
    R: np.ndarray
    t: np.ndarray
    box_size: Tuple[float, float, float]
    box_center: np.ndarray  # model-frame centre of the 3D box, metres


def detection3d_array_msg(header, items: Iterable[PublishedPose]):
    """-> `vision_msgs/Detection3DArray`: class, score, pose, and the oriented 3D box."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    msg = Detection3DArray()
    msg.header = header
    for item in items:
        det = Detection3D()
        det.header = header
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = item.class_id
        hyp.hypothesis.score = float(item.score)
        hyp.pose.pose = pose_to_msg(item.R, item.t)
        det.results.append(hyp)
        det.bbox.center = pose_to_msg(item.R, item.R @ item.box_center + item.t)
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in item.box_size)
        det.id = item.name
        msg.detections.append(det)
    return msg


def tf_message(header, frames: Iterable[Tuple[str, np.ndarray, np.ndarray]]):
    """(child_frame, R, t) triples under `header.frame_id` -> `tf2_msgs/TFMessage`."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    msg = TFMessage()
    for child, R, t in frames:
        tr = TransformStamped()
        tr.header = header
        tr.child_frame_id = child
        tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z = (float(v) for v in t)
        q = matrix_to_quaternion(R)
        tr.transform.rotation.x, tr.transform.rotation.y, tr.transform.rotation.z, tr.transform.rotation.w = (float(v) for v in q)
        msg.transforms.append(tr)
    return msg


def detection2d_array_msg(header, detections: Iterable[Detection]):
    """`runtime.detection.Detection` records -> `vision_msgs/Detection2DArray` (used by the detector node);
    ``class_id`` is written as a string."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header = header
    for d in detections:
        det = Detection2D()
        det.header = header
        x0, y0, x1, y1 = d.box
        det.bbox.center.position.x, det.bbox.center.position.y = (x0 + x1) / 2, (y0 + y1) / 2
        det.bbox.size_x, det.bbox.size_y = x1 - x0, y1 - y0
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = str(d.class_id), float(d.score)
        det.results.append(hyp)
        det.id = d.detection_id
        msg.detections.append(det)
    return msg


def marker_array_msg(header, items: Iterable[PublishedPose], mesh_uris: Optional[dict] = None, lifetime_s: float = 0.5):
    """-> `visualization_msgs/MarkerArray`: each object's mesh (when a URI is known) or its 3D box, for RViz."""
    from visualization_msgs.msg import Marker, MarkerArray

    msg = MarkerArray()
    for k, item in enumerate(items):
        m = Marker()
        m.header = header
        m.ns, m.id = item.name.rsplit("_", 1)[0], k
        uri = (mesh_uris or {}).get(item.class_id)
        if uri:
            m.type, m.mesh_resource, m.mesh_use_embedded_materials = Marker.MESH_RESOURCE, uri, True
            m.pose = pose_to_msg(item.R, item.t)
            m.scale.x = m.scale.y = m.scale.z = 1.0
        else:
            m.type = Marker.CUBE
            m.pose = pose_to_msg(item.R, item.R @ item.box_center + item.t)
            m.scale.x, m.scale.y, m.scale.z = (float(v) for v in item.box_size)
        m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.8, 0.2, 0.6
        m.lifetime.sec = int(lifetime_s)
        m.lifetime.nanosec = int((lifetime_s % 1) * 1e9)
        msg.markers.append(m)
    return msg
