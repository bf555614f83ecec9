"""Message <-> core conversions, checked against OpenCV and SciPy as independent references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pose6d_ros.ros import conversions as conv


def _image_msg(pixels: np.ndarray, encoding: str, pad: int = 0):
    from sensor_msgs.msg import Image

    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * c)
    rows = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * c + pad, data=rows.tobytes())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_image_encodings_match_opencv(encoding, pad):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    source = {
        "rgb8": rgb,
        "bgr8": cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
        "rgba8": cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA),
        "bgra8": cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA),
        "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
    }[encoding]
    expected = rgb if encoding != "mono8" else cv2.cvtColor(source, cv2.COLOR_GRAY2RGB)
    out = conv.image_to_rgb(_image_msg(source, encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "field,mutate",
    [
        ("encoding", lambda m: setattr(m, "encoding", "16UC1")),
        ("step", lambda m: setattr(m, "step", 3)),
        ("data", lambda m: setattr(m, "data", b"\x00" * 10)),
        ("height", lambda m: setattr(m, "height", 0)),
    ],
)
def test_bad_images_name_the_field(field, mutate):
    msg = _image_msg(np.zeros((4, 4, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(conv.MessageError, match=field):
        conv.image_to_rgb(msg)


def _scipy_quaternion(R):
    ref = Rotation.from_matrix(R).as_quat()  # (x, y, z, w)
    return ref if ref[3] >= 0 else -ref


def test_quaternion_matches_scipy():
    for R in Rotation.random(200, random_state=4).as_matrix():
        np.testing.assert_allclose(conv.matrix_to_quaternion(R), _scipy_quaternion(R), atol=1e-9)


@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-6, 1e-3])
def test_quaternion_near_180_degrees_matches_scipy(gap):
    """Near 180 degrees w -> 0 and the trace-based formula loses precision; the rotation must survive."""
    axes = np.vstack([np.eye(3), Rotation.random(20, random_state=5).as_rotvec()])
    for axis in axes / np.linalg.norm(axes, axis=1, keepdims=True):
        R = Rotation.from_rotvec((np.pi - gap) * axis).as_matrix()
        q = conv.matrix_to_quaternion(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), R, atol=1e-9)
        if gap > 0:  # at exactly 180 degrees w = 0 and q, -q are both canonical
            np.testing.assert_allclose(q, _scipy_quaternion(R), atol=1e-8)


# What CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8") returns for each 8-bit encoding (cv_bridge's
# documented conversions: channel order swapped for bgr, alpha dropped, mono replicated), on one 1x2 image
# whose two pixels are (R, G, B, A) = (10, 20, 30, 40) and (50, 60, 70, 80) or grey 90 and 100.
_BRIDGE_CASES = {
    "rgb8": (np.array([[[10, 20, 30], [50, 60, 70]]], np.uint8), [[[10, 20, 30], [50, 60, 70]]]),
    "bgr8": (np.array([[[30, 20, 10], [70, 60, 50]]], np.uint8), [[[10, 20, 30], [50, 60, 70]]]),
    "rgba8": (np.array([[[10, 20, 30, 40], [50, 60, 70, 80]]], np.uint8), [[[10, 20, 30], [50, 60, 70]]]),
    "bgra8": (np.array([[[30, 20, 10, 40], [70, 60, 50, 80]]], np.uint8), [[[10, 20, 30], [50, 60, 70]]]),
    "mono8": (np.array([[90, 100]], np.uint8), [[[90, 90, 90], [100, 100, 100]]]),
}


@pytest.mark.parametrize("encoding", sorted(_BRIDGE_CASES))
@pytest.mark.parametrize("pad", [0, 3])
def test_fallback_decoder_agrees_with_cv_bridge(encoding, pad):
    """The fallback gives what cv_bridge gives: cv_bridge itself where installed, its documented output otherwise."""
    source, documented = _BRIDGE_CASES[encoding]
    msg = _image_msg(source, encoding, pad)
    if conv.CvBridge is not None:
        expected = conv.CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
    else:
        expected = np.array(documented, np.uint8)
    np.testing.assert_array_equal(conv.raw_image_to_rgb(msg), expected)
    np.testing.assert_array_equal(conv.image_to_rgb(msg), expected)


def _compressed_msg(data: bytes, fmt: str):
    from sensor_msgs.msg import CompressedImage

    return CompressedImage(format=fmt, data=data)


def _smooth_rgb(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([4 * x, 5 * y, 2 * (x + y)], axis=2).astype(np.uint8)


def test_compressed_png_is_exact_and_jpeg_is_close():
    rgb = _smooth_rgb()
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(conv.compressed_image_to_rgb(_compressed_msg(png.tobytes(), "bgr8; png compressed bgr8")), rgb)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = conv.compressed_image_to_rgb(_compressed_msg(jpg.tobytes(), "rgb8; jpeg compressed bgr8"))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # a channel swap would put the mean error near 60; jpeg at quality 95 on a smooth image stays near 1
    assert np.abs(out.astype(int) - rgb).mean() < 3
    grey = rgb[:, :, 1]
    ok, png = cv2.imencode(".png", grey)
    out = conv.compressed_image_to_rgb(_compressed_msg(png.tobytes(), "png"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("fmt,data,field", [
    ("16UC1; compressedDepth png", b"\x89PNG....", "format"),
    ("tiff", b"II*\x00", "format"),
    ("jpeg", b"not a jpeg at all", "data"),
    ("jpeg", b"", "data"),
])
def test_bad_compressed_images_name_the_field(fmt, data, field):
    with pytest.raises(conv.MessageError, match=rf"CompressedImage\.{field}"):
        conv.compressed_image_to_rgb(_compressed_msg(data, fmt))


def test_sixteen_bit_png_is_refused():
    ok, png = cv2.imencode(".png", np.full((4, 4), 4000, np.uint16))
    with pytest.raises(conv.MessageError, match=r"CompressedImage\.data: uint16"):
        conv.compressed_image_to_rgb(_compressed_msg(png.tobytes(), "png"))


def test_camera_info_conversion_and_rejection():
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    info.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    info.d = [0.1, -0.05, 0.001, 0.0, 0.0]
    cam = conv.camera_info_to_model(info)
    np.testing.assert_allclose(np.asarray(cam.K), np.array(info.k).reshape(3, 3))
    assert cam.distortion_model == "plumb_bob" and cam.has_distortion
    info.k = [0.0] * 9
    with pytest.raises(conv.MessageError, match="CameraInfo.k"):
        conv.camera_info_to_model(info)


def test_detection_round_trip_and_bad_detection():
    from std_msgs.msg import Header

    dets = [conv.Detection(class_id="duck", box=(10.0, 20.0, 50.0, 80.0), score=0.9, detection_id="a"),
            conv.Detection(class_id="3", box=(0.0, 0.0, 4.0, 2.0), score=0.4)]
    msg = conv.detection2d_array_msg(Header(frame_id="cam"), dets)
    back = [conv.detection_from_msg(d, i) for i, d in enumerate(msg.detections)]
    assert back == dets
    msg.detections[1].bbox.size_x = float("nan")
    with pytest.raises(conv.MessageError, match=r"detections\[1\]"):
        conv.detection_from_msg(msg.detections[1], 1)
    msg.detections[0].results = []
    with pytest.raises(conv.MessageError, match=r"detections\[0\].results"):
        conv.detection_from_msg(msg.detections[0], 0)


def test_pose_messages_carry_the_pose():
    from std_msgs.msg import Header

    R = Rotation.from_rotvec([0.2, -0.4, 1.1]).as_matrix()
    t = np.array([0.05, -0.02, 0.7])
    header = Header(frame_id="camera_optical")
    pa = conv.pose_array_msg(header, [(R, t)])
    p = pa.poses[0]
    np.testing.assert_allclose([p.position.x, p.position.y, p.position.z], t)
    q = [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
    np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), R, atol=1e-9)
    item = conv.PublishedPose("duck_0", "duck", 0.8, R, t, (0.1, 0.05, 0.08), np.array([0.0, 0.01, 0.0]))
    d3 = conv.detection3d_array_msg(header, [item])
    c = d3.detections[0].bbox.center.position
    np.testing.assert_allclose([c.x, c.y, c.z], R @ np.array([0.0, 0.01, 0.0]) + t)
    tf = conv.tf_message(header, [("duck_0", R, t)])
    assert tf.transforms[0].child_frame_id == "duck_0"
    assert tf.transforms[0].header.frame_id == "camera_optical"
