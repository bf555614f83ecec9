"""Messages the package publishes and consumes survive a real DDS round trip between two nodes."""

from __future__ import annotations

import math

import pytest


def _pose_array():
    from geometry_msgs.msg import Pose, PoseArray

    msg = PoseArray()
    msg.header.frame_id = "camera_color_optical_frame"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 17, 250
    for k in range(3):
        p = Pose()
        p.position.x, p.position.y, p.position.z = 0.1 * k, -0.05, 0.6 + k
        c, s = math.cos(0.3 * k / 2), math.sin(0.3 * k / 2)
        p.orientation.w, p.orientation.z = c, s
        msg.poses.append(p)
    return msg


def _tf_message():
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.frame_id = "camera_color_optical_frame"
    t.child_frame_id = "duck_0"
    t.transform.translation.x, t.transform.translation.z = 0.02, 0.55
    t.transform.rotation.w = 1.0
    return TFMessage(transforms=[t])


def _detection2d_array():
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header.frame_id = "camera"
    d = Detection2D()
    d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.theta = 320.5, 240.25, 0.0
    d.bbox.size_x, d.bbox.size_y = 64.0, 48.0
    d.id = "track-7"
    h = ObjectHypothesisWithPose()
    h.hypothesis.class_id, h.hypothesis.score = "duck", 0.93
    d.results.append(h)
    msg.detections.append(d)
    return msg


def _detection3d_array():
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    msg = Detection3DArray()
    msg.header.frame_id = "camera"
    d = Detection3D()
    d.bbox.center.position.z = 0.7
    d.bbox.center.orientation.w = 1.0
    d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = 0.1, 0.08, 0.06
    h = ObjectHypothesisWithPose()
    h.hypothesis.class_id, h.hypothesis.score = "3", 0.5
    h.pose.pose.position.z = 0.7
    h.pose.covariance[0] = 1e-4
    d.results.append(h)
    msg.detections.append(d)
    return msg


CASES = {
    "PoseArray": ("geometry_msgs.msg", "PoseArray", "/object_poses", _pose_array),
    "TFMessage": ("tf2_msgs.msg", "TFMessage", "/tf", _tf_message),
    "Detection2DArray": ("vision_msgs.msg", "Detection2DArray", "/detections", _detection2d_array),
    "Detection3DArray": ("vision_msgs.msg", "Detection3DArray", "/pose6d/detections", _detection3d_array),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_nodes_round_trip(case, ros_context, spinner, collector, wait_for_match):
    import importlib

    from rclpy.node import Node

    module, type_name, topic, make = CASES[case]
    msg_type = getattr(importlib.import_module(module), type_name)
    talker = spinner.add(Node("talker", context=ros_context))
    listener = spinner.add(Node("listener", context=ros_context))
    got = collector(listener, msg_type, topic)
    pub = talker.create_publisher(msg_type, topic, 10)
    assert wait_for_match(pub), "DDS discovery did not match publisher and subscription"
    sent = make()
    pub.publish(sent)
    received = got.wait_for(1, timeout=10.0)
    assert len(received) == 1
    # Generated message classes compare field by field; also check one field explicitly so a
    # broken __eq__ could not hide a failure.
    assert received[0] == sent
    assert received[0].get_fields_and_field_types() == sent.get_fields_and_field_types()


def test_domain_isolation(ros_context, spinner, collector, tmp_path):
    """A publisher on another ROS_DOMAIN_ID is not heard; one on ours is."""
    import os
    import subprocess
    import sys

    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node

    listener = spinner.add(Node("isolation_listener", context=ros_context))
    got = collector(listener, PoseArray, "/isolation_probe")
    script = (
        "import rclpy, time\n"
        "from rclpy.node import Node\n"
        "from geometry_msgs.msg import PoseArray\n"
        "rclpy.init()\n"
        "n = Node('probe')\n"
        "p = n.create_publisher(PoseArray, '/isolation_probe', 10)\n"
        "m = PoseArray(); m.header.frame_id = __import__('os').environ['ROS_DOMAIN_ID']\n"
        "end = time.time() + 4\n"
        "while time.time() < end:\n"
        "    p.publish(m); time.sleep(0.1)\n"
        "n.destroy_node(); rclpy.shutdown()\n"
    )
    ours = os.environ["ROS_DOMAIN_ID"]
    other = str(1 + (int(ours) + 50) % 101)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "ROS_DOMAIN_ID": d})
        for d in (other, ours)
    ]
    for p in procs:
        assert p.wait(timeout=30) == 0
    frames = {m.header.frame_id for m in got.messages}
    assert ours in frames
    assert other not in frames
