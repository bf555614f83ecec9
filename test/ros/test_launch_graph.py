"""`python -m pose6d_ros.ros.launch_graph` runs the real `launch/estimator.launch.py` on a real rclpy
graph over Fast DDS (this run's ROS_DOMAIN_ID): a frame goes image -> detector node -> estimator node ->
/object_poses; without the detector an external Detection2DArray source feeds the estimator; bad
arguments and a node that cannot start end the launch with a clear error and its exit code, and
every node process is gone afterwards.

The detector is trained for one step by the real `train_detector` entry point, so its boxes are
arbitrary: both nodes run with their score thresholds at 0 (through the launch file's `config` and
`detector_config` arguments) so that the frame carries detections all the way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml

from node_fixtures import REGISTRY_YAML, all_finite_pose_array, make_model, wait_until

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "estimator.launch.py"
K = np.array([[286.0, 0.0, 161.0], [0.0, 287.0, 121.0], [0.0, 0.0, 1.0]])


def _config(source: str, node: str, out: Path, **overrides) -> Path:
    """The package's config file with ``overrides`` (what a user passes as ``config:=`` / ``detector_config:=``)."""
    data = yaml.safe_load((ROOT / "config" / source).read_text())
    data[node]["ros__parameters"].update(overrides)
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    """(detector checkpoint, pose model, estimator config, detector config) for the launch file."""
    from pose6d_ros.detection.train import main as train_detector
    from pose6d_ros.registry import ObjectRegistry

    tmp = tmp_path_factory.mktemp("launch")
    detector = tmp / "detector.pt"
    assert train_detector(["--objects", str(REGISTRY_YAML), "--out", str(detector), "--steps", "1", "--image-size",
                           "96", "128", "--batch", "2", "--box-head-dim", "64", "--threads", "1"]) == 0
    registry = ObjectRegistry.from_yaml(REGISTRY_YAML)
    pose = make_model(registry, list(registry.ids), tmp / "pose.onnx")  # every class the detector may name
    # Scores of an untrained detector are ~1/16; the stand-in pose model puts objects far away.
    est = _config("estimator.yaml", "pose6d_estimator", tmp / "estimator.yaml", min_score=0.0, min_box_px=0.0,
                  min_depth_m=0.0, max_depth_m=1e6, publish_tf=False)
    det = _config("detector.yaml", "pose6d_detector", tmp / "detector.yaml", min_score=0.0)
    return detector, pose, est, det


class Launched:
    """``launch_graph`` as a process (its own session), its output in a log file."""

    def __init__(self, log: Path, *arguments: str) -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pose6d_ros.ros.launch_graph", str(LAUNCH), *arguments],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def node_pids(self) -> List[int]:
        return [int(p) for p in re.findall(r"started, pid (\d+)", self.log())]

    def stop(self) -> int:
        """Ctrl-C as a user would; returns the exit code. Whatever survives is killed (no leak)."""
        from pose6d_ros.ros.replay import stop_process

        if self.proc.poll() is None:
            stop_process(self.proc, timeout=40.0)
        leaked = [pid for pid in self.node_pids() if _alive(pid)]
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        self._log.close()
        assert not leaked, f"node processes still running after launch_graph exited: {leaked}"
        return self.proc.returncode


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_graph(launched: Launched, ready, timeout: float = 180.0) -> None:
    """Wait until ``ready()``; fail with the launch output when launch_graph exits or time runs out."""
    ok = wait_until(lambda: ready() or launched.proc.poll() is not None, timeout, period=0.2)
    assert ok and launched.proc.poll() is None, f"graph not up (exit {launched.proc.poll()}):\n{launched.log()}"


def _frame_messages(sec: int, nanosec: int):
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    from pose6d_ros.ros.conversions import rgb_to_image

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    rgb = np.random.default_rng(sec).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    info = CameraInfo(header=header, width=320, height=240, distortion_model="plumb_bob")
    info.k = [float(v) for v in K.reshape(-1)]
    info.d = [0.0] * 5
    return rgb_to_image(rgb, header, "bgr8"), info


def test_a_frame_goes_through_detector_and_estimator_to_object_poses(
        graph_files, tmp_path, ros_context, spinner, collector):
    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    detector, pose, est_cfg, det_cfg = graph_files
    launched = Launched(tmp_path / "launch.log", f"model:={pose}", f"detector_model:={detector}", f"config:={est_cfg}",
                        f"detector_config:={det_cfg}", "use_detector:=true")
    try:
        probe = spinner.add(Node("launch_probe", context=ros_context))
        poses = collector(probe, PoseArray, "/object_poses")
        dets2d = collector(probe, Detection2DArray, "/detections")
        dets3d = collector(probe, Detection3DArray, "/pose6d_estimator/detections")
        pub_img = probe.create_publisher(Image, "/camera/image_raw", 10)
        pub_info = probe.create_publisher(CameraInfo, "/camera/camera_info", 10)
        # both nodes read the image; the estimator the camera_info; both outputs are discovered
        _wait_graph(launched, lambda: pub_img.get_subscription_count() >= 2 and pub_info.get_subscription_count() >= 1
                    and probe.count_publishers("/detections") >= 1 and probe.count_publishers("/object_poses") >= 1
                    and {"pose6d_detector", "pose6d_estimator"} <= set(probe.get_node_names()))
        time.sleep(1.0)  # the probe's subscriptions match the nodes' publishers
        image, info = _frame_messages(1234, 567)
        pub_info.publish(info)
        time.sleep(0.1)
        pub_img.publish(image)

        got2d = dets2d.wait_for(1, timeout=90.0)
        got = poses.wait_for(1, timeout=90.0)
        assert got2d and got, f"no output (detections: {len(got2d)}, poses: {len(got)}):\n{launched.log()}"
        d = got2d[0]
        assert (d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id) == (1234, 567, "camera_optical")
        assert len(d.detections) > 0, "the detector published no box: the frame did not reach the estimator's boxes"
        p = got[0]
        assert (p.header.stamp.sec, p.header.stamp.nanosec, p.header.frame_id) == (1234, 567, "camera_optical")
        assert all_finite_pose_array(p)
        # The poses are of the detector's boxes: the estimator's Detection3DArray names their classes.
        d3 = dets3d.wait_for(1, timeout=30.0)[0]
        assert (d3.header.stamp.sec, d3.header.stamp.nanosec) == (1234, 567)
        assert len(p.poses) == len(d3.detections) > 0, "no pose from the detector's boxes"
        classes_2d = {r.hypothesis.class_id for x in d.detections for r in x.results}
        assert {r.hypothesis.class_id for x in d3.detections for r in x.results} <= classes_2d
        assert "[pose6d_detector]" in launched.log() and "[pose6d_estimator]" in launched.log()
    finally:
        code = launched.stop()
    assert code == 0, launched.log()


def test_without_the_detector_only_the_estimator_runs_on_an_external_detector(
        graph_files, tmp_path, ros_context, spinner, collector):
    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray

    from pose6d_ros.ros import conversions as conv
    from pose6d_ros.runtime.detection import Detection

    _, pose, est_cfg, _ = graph_files
    topic = "/external/detections"
    launched = Launched(tmp_path / "launch.log", f"model:={pose}", f"config:={est_cfg}", "use_detector:=false",
                        f"detections_topic:={topic}")
    try:
        probe = spinner.add(Node("launch_probe", context=ros_context))
        poses = collector(probe, PoseArray, "/object_poses")
        pub_img = probe.create_publisher(Image, "/camera/image_raw", 10)
        pub_info = probe.create_publisher(CameraInfo, "/camera/camera_info", 10)
        pub_det = probe.create_publisher(Detection2DArray, topic, 10)
        _wait_graph(launched, lambda: pub_det.get_subscription_count() >= 1 and pub_info.get_subscription_count() >= 1
                    and probe.count_publishers("/object_poses") >= 1 and "pose6d_estimator" in probe.get_node_names())
        time.sleep(1.0)
        assert "pose6d_detector" not in probe.get_node_names()
        assert pub_img.get_subscription_count() == 1, "something besides the estimator reads the image"
        assert len(launched.node_pids()) == 1 and "[pose6d_detector]" not in launched.log()

        image, info = _frame_messages(77, 9)
        box = Detection(class_id="duck", box=(100.0, 60.0, 190.0, 150.0), score=0.9)
        pub_info.publish(info)
        time.sleep(0.1)
        pub_img.publish(image)
        pub_det.publish(conv.detection2d_array_msg(image.header, [box]))
        got = poses.wait_for(1, timeout=60.0)
        assert got, f"no poses from the external detections:\n{launched.log()}"
        assert (got[0].header.stamp.sec, got[0].header.stamp.nanosec) == (77, 9)
        assert len(got[0].poses) == 1 and all_finite_pose_array(got[0])
        launched.proc.send_signal(signal.SIGTERM)  # as a service manager stops it: forwarded to the node
        launched.proc.wait(timeout=40)
        assert "SIGTERM received: stopping the nodes" in launched.log()
    finally:
        code = launched.stop()
    assert code == 0, launched.log()


def test_command_lines_are_read_by_rcl_as_the_launch_file_means(graph_files, ros_context):
    """rcl itself (not our parser) reads each node's --ros-args: the node name, the config file's
    values, and the launch arguments with launch_ros's types (an empty value is the empty string)."""
    import rclpy
    from rclpy.node import Node

    from pose6d_ros.ros.launch_graph import resolve

    detector, pose, _, det_cfg = graph_files
    commands = resolve(LAUNCH, {"model": str(pose), "detector_config": str(det_cfg), "device": "cpu"})
    assert [c.name for c in commands] == ["pose6d_detector", "pose6d_estimator"]
    expect = {"pose6d_detector": {"model": "", "min_score": 0.0, "qos_depth": 5, "device": "cpu",
                                  "objects": str(REGISTRY_YAML)},
              "pose6d_estimator": {"model": str(pose), "min_score": 0.3, "publish_tf": True,
                                   "detections_topic": "/detections"}}
    for c in commands:
        assert c.argv[:3] == [sys.executable, "-m", f"pose6d_ros.ros.{c.name.replace('pose6d_', '')}_node"]
        ctx = rclpy.context.Context()
        rclpy.init(args=["node", *c.argv[3:]], context=ctx)
        try:
            node = Node("placeholder", context=ctx, automatically_declare_parameters_from_overrides=True)
            assert node.get_name() == c.name
            for key, value in expect[c.name].items():
                got = node.get_parameter(key).value
                assert got == value and type(got) is type(value), (c.name, key, got)
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("argument,message", [
    ("modle:=x.onnx", "unknown launch argument modle; the launch file declares: config,"),
    ("use_detector:=maybe", "launch argument 'use_detector': expected true, false, 1 or 0, got 'maybe'"),
    ("model", "launch argument 'model' is not of the form name:=value"),
    ("config:=/nonexistent/estimator.yaml", "parameters file not found: /nonexistent/estimator.yaml"),
])
def test_bad_launch_argument_is_one_line_and_exit_2(argument, message):
    r = subprocess.run([sys.executable, "-m", "pose6d_ros.ros.launch_graph", str(LAUNCH), argument],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("launch_graph: error: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "started" not in r.stdout


def test_a_node_that_cannot_start_stops_the_graph_with_its_exit_code(graph_files, tmp_path):
    detector, _, _, det_cfg = graph_files
    missing = tmp_path / "nope.onnx"
    launched = Launched(tmp_path / "launch.log", f"model:={missing}", f"detector_model:={detector}",
                        f"detector_config:={det_cfg}")
    try:
        launched.proc.wait(timeout=180)
    finally:
        code = launched.stop()
    log = launched.log_path.read_text()
    assert code == 2, log
    assert f"[pose6d_estimator] pose6d_estimator: error: ONNX model {missing} does not exist" in log
    assert "launch_graph: error: node 'pose6d_estimator' exited with code 2; stopping the others" in log
    assert len(launched.node_pids()) == 2  # the detector was started, and stop() found it gone


def test_parameter_values_reach_rcl_with_launch_ros_types(ros_context):
    """A launch argument's string becomes the parameter launch_ros would set (its YAML reading: PyYAML,
    YAML 1.1), and rcl's own parser of ``-p`` reads that value back, also where rcl alone would read it
    otherwise (``1e5`` a float, ``inf``, an empty value refused)."""
    import rclpy
    from rclpy.node import Node

    from pose6d_ros.ros.launch_graph import _ros_value

    cases = {"": "", "cpu": "cpu", "/camera/image_raw": "/camera/image_raw", "/a b/c:d.yaml": "/a b/c:d.yaml",
             "true": True, "False": False, "yes": True, "5": 5, "1.5": 1.5, "1e5": "1e5", "inf": "inf",
             "nan": "nan", "none": "none", "null": "null", "x: y": "x: y", "a # b": "a", "'quoted'": "quoted",
             "[1, 2]": [1, 2]}
    args = ["node", "--ros-args"]
    for i, text in enumerate(cases):
        args += ["-p", f"p{i}:={_ros_value(text)}"]
    ctx = rclpy.context.Context()
    rclpy.init(args=args, context=ctx)
    try:
        node = Node("values", context=ctx, automatically_declare_parameters_from_overrides=True)
        for i, (text, want) in enumerate(cases.items()):
            got = node.get_parameter(f"p{i}").value
            got = list(got) if not isinstance(got, (str, bool, int, float)) else got
            assert got == want and type(got) is type(want), (text, got, want)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
