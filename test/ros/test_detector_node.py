"""The detector node on a real rclpy graph: publishes Detection2DArray with the image's header,
survives garbage images, refuses a missing or mismatched model with a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A detector trained for one step on synthetic scenes by the real train_detector entry point."""
    from pose6d_ros.detection.train import main

    out = tmp_path_factory.mktemp("detnode") / "tiny.pt"
    assert main(["--objects", str(OBJECTS), "--out", str(out), "--steps", "1", "--image-size", "96", "128",
                 "--batch", "2", "--box-head-dim", "64", "--threads", "2"]) == 0
    return out


def _image(stamp_sec: int, frame: str = "cam_optical", encoding: str = "rgb8"):
    from std_msgs.msg import Header

    from pose6d_ros.ros.conversions import rgb_to_image

    h = Header()
    h.stamp.sec, h.stamp.nanosec, h.frame_id = stamp_sec, 250, frame
    rgb = np.random.default_rng(stamp_sec).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return rgb_to_image(rgb, h)


def _node(ros_context, model, **extra):
    from pose6d_ros.ros.detector_node import DetectorNode

    params = [Parameter("model", value=str(model)), Parameter("objects", value=str(OBJECTS)),
              Parameter("image_topic", value="/det_test/image"),
              Parameter("detections_topic", value="/det_test/detections"),
              Parameter("min_score", value=0.0)] + [Parameter(k, value=v) for k, v in extra.items()]
    return DetectorNode(context=ros_context, parameter_overrides=params)


def test_publishes_detections_with_image_header_and_survives_garbage(
        tiny_model, ros_context, spinner, collector, wait_for_match):
    import rclpy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from pose6d_ros.registry import ObjectRegistry

    node = spinner.add(_node(ros_context, tiny_model))
    probe = rclpy.create_node("det_probe", context=ros_context)
    out = collector(probe, Detection2DArray, "/det_test/detections")
    pub = probe.create_publisher(Image, "/det_test/image", 10)
    spinner.add(probe)
    assert wait_for_match(pub, 1)
    assert wait_for_match(node.pub, 1)

    bad = _image(5)
    bad.encoding = "yuv422_yuy2"  # unsupported: a warning, no output, no crash
    pub.publish(bad)
    short = _image(6)
    short.data = bytes(short.data)[:100]  # truncated buffer
    pub.publish(short)
    good = _image(7)
    pub.publish(good)
    msgs = out.wait_for(1, timeout=60.0)
    assert len(msgs) == 1, "no Detection2DArray for the good image"
    m = msgs[0]
    assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (7, 250, "cam_optical")
    names = ObjectRegistry.from_yaml(OBJECTS).names
    for d in m.detections:
        assert d.results[0].hypothesis.class_id in names
        assert d.bbox.size_x > 0 and d.bbox.size_y > 0
        assert d.header.stamp.sec == 7
    assert node.warnings.counts.get("bad_image", 0) == 2
    assert node.frames_processed == 1
    # still alive: a later image is answered too
    pub.publish(_image(8))
    msgs = out.wait_for(2, timeout=60.0)
    assert [x.header.stamp.sec for x in msgs] == [7, 8]


def test_validate_detector_params():
    from pose6d_ros.ros.params import DetectorParams, ParameterError, validate_detector_params

    ok = validate_detector_params({"model": "m.pt", "objects": "o.yaml", "min_score": 1})
    assert isinstance(ok, DetectorParams)
    assert ok.min_score == 1.0 and ok.device == "cpu" and ok.detections_topic == "/detections"
    for bad, name in (({"model": "m.pt"}, "objects"), ({"model": "m", "objects": "o", "min_score": 2.0}, "min_score"),
                      ({"model": "m", "objects": "o", "device": "tpu"}, "device"),
                      ({"model": "m", "objects": "o", "qos_depth": "5"}, "qos_depth"),
                      ({"model": "m", "objects": "o", "bogus": 1}, "bogus")):
        with pytest.raises(ParameterError, match=name):
            validate_detector_params(bad)


def _run_main(*params: str):
    import subprocess

    code = ("import sys; from pose6d_ros.ros.detector_node import main; "
            "sys.exit(main(sys.argv[1:]))")
    args = [sys.executable, "-c", code, "--ros-args"]
    for p in params:
        args += ["-p", p]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_missing_or_mismatched_model_exits_nonzero(tiny_model, tmp_path):
    r = _run_main(f"model:={tmp_path / 'nope.pt'}", f"objects:={OBJECTS}")
    assert r.returncode == 2 and "nope.pt" in r.stderr and "Traceback" not in r.stderr
    other = tmp_path / "objects.yaml"
    other.write_text(OBJECTS.read_text().replace("name: duck", "name: goose"))
    r = _run_main(f"model:={tiny_model}", f"objects:={other}")
    assert r.returncode == 2 and "duck" in r.stderr and "Traceback" not in r.stderr
