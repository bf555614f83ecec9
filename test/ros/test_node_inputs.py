"""What the estimator node accepts as input: plausible cameras only, boxes and depths within its limits,
CameraInfo arriving after its image, compressed images. Real rclpy graph, node built in this process."""

from __future__ import annotations

import time
from collections import Counter

from node_fixtures import (POSE_PARAMS, REGISTRY_YAML, InProcessNode, camera_info_msg, direct_estimate, frame_messages,
                           stamp, wait_until)


def _last(statuses):
    return statuses[-1] if statuses else None


def test_implausible_camera_info_is_rejected(node_setup, ros_context, spinner, collector):
    """fx = fy = 1e12 (a 3.7e-8 deg field of view) used to be accepted and gave poses hundreds of
    kilometres away. It is rejected with a warning naming the field; the frame waits for a good one."""
    registry, _, model, frames, _ = node_setup
    frame = frames[0]
    n = InProcessNode(ros_context, spinner, collector, model, diagnostics_period_s=0.5)
    absurd = camera_info_msg(frame, stamp(0))
    absurd.k = [1e12, 0.0, 160.0, 0.0, 1e12, 120.0, 0.0, 0.0, 1.0]
    n.pub_info.publish(absurd)
    img, dets, _ = frame_messages(frame, 0, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    assert wait_until(lambda: any("[invalid_camera_info] CameraInfo.k: fx = 1e+12" in w for w in n.warnings()),
                      timeout=10), n.warnings()
    assert wait_until(lambda: any(n.values(s)["camera_info rejected"] == "1" for s in n.statuses(": inputs")))
    assert wait_until(lambda: any(n.values(s)["frames skipped: no_camera_info"] == "1"
                                  for s in n.statuses(": processing")), timeout=10), n.warnings()
    assert n.poses.messages == []
    # a plausible camera_info, and the next frame is answered
    n.pub_info.publish(camera_info_msg(frame, stamp(1)))
    img, dets, _ = frame_messages(frame, 1, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    got = n.poses.wait_for(1, timeout=30)
    assert [m.header.stamp.sec for m in got] == [1001]
    assert all(0.05 <= p.position.z <= 20.0 for p in got[0].poses)


def test_depth_range_and_min_box_reach_the_estimator(node_setup, ros_context, spinner, collector):
    """``max_depth_m`` 0.3 and a 5-px box among the frame's boxes: the node skips exactly what a direct
    call with those limits skips, under the same reasons, and reports the counts."""
    from pose6d_ros.ros import conversions as conv
    from std_msgs.msg import Header

    registry, _, model, frames, _ = node_setup
    frame = frames[1]
    n = InProcessNode(ros_context, spinner, collector, model, max_depth_m=0.3, diagnostics_period_s=0.5)
    name = registry.get(frame.obj_ids[0]).name
    dets = [conv.Detection(registry.get(oid).name, 0.9, box) for oid, box in zip(frame.obj_ids, frame.boxes)]
    dets.append(conv.Detection(name, 0.9, (100.0, 100.0, 105.0, 105.0)))
    header = Header(stamp=stamp(0), frame_id="camera_optical")
    n.pub_info.publish(camera_info_msg(frame, stamp(0)))
    time.sleep(0.1)
    n.pub_img.publish(conv.rgb_to_image(frame.rgb, header))
    n.pub_det.publish(conv.detection2d_array_msg(header, dets))
    (msg,) = n.poses.wait_for(1, timeout=30)
    expected = direct_estimate(registry, model, frame, [(d.class_id, d.box, d.score) for d in dets], max_depth_m=0.3)
    reasons = Counter(e.reason for e in expected)
    assert reasons["small_box"] == 1 and reasons["depth_out_of_range"] >= 1, reasons
    assert len(msg.poses) == reasons[""]
    def counted(s):
        v = n.values(s)
        return (int(v["detections skipped: small_box"]), int(v["detections skipped: depth_out_of_range"]))
    assert wait_until(lambda: any(counted(s) == (1, reasons["depth_out_of_range"])
                                  for s in n.statuses(": processing")), timeout=10), \
        [n.values(s) for s in n.statuses(": processing")][-1:]
    assert any("[depth_out_of_range]" in w for w in n.warnings()) and any("[small_box]" in w for w in n.warnings())


def test_first_frame_waits_for_its_camera_info(node_setup, ros_context, spinner, collector):
    """The camera_info of the first frame arrives 0.3 s after its image and detections: the frame used to
    be dropped ("no valid camera_info received yet"); it is held and answered. A frame whose camera_info
    never comes is skipped after ``camera_info_wait_s`` and counted."""
    registry, _, model, frames, _ = node_setup
    frame = frames[0]
    n = InProcessNode(ros_context, spinner, collector, model, camera_info_wait_s=1.0, diagnostics_period_s=0.5,
                      **POSE_PARAMS)
    img, dets, core = frame_messages(frame, 0, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    time.sleep(0.3)
    assert n.poses.messages == []
    n.pub_info.publish(camera_info_msg(frame, stamp(0)))
    (msg,) = n.poses.wait_for(1, timeout=30)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1000, 17)
    expected = [e for e in direct_estimate(registry, model, frame, [(d.class_id, d.box, d.score) for d in core],
                                           **POSE_PARAMS) if e.ok]
    assert len(msg.poses) == len(expected) > 0
    for p, e in zip(msg.poses, expected):
        assert abs(p.position.z - e.t[2]) < 1e-6
    # the camera_info stream is stamped like the images: frame 1 waits for its own and, since it never
    # comes, is answered with the latest one once camera_info_wait_s has passed
    img, dets, _ = frame_messages(frame, 1, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    got = n.poses.wait_for(2, timeout=30)
    assert [m.header.stamp.sec for m in got] == [1000, 1001]
    assert wait_until(lambda: any(n.values(s)["frames held for camera_info"] == "2"
                                  for s in n.statuses(": pairing")), timeout=10)


def test_frame_without_any_camera_info_is_skipped_after_the_wait(node_setup, ros_context, spinner, collector):
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, camera_info_wait_s=0.2, diagnostics_period_s=0.5)
    img, dets, _ = frame_messages(frames[0], 0, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    assert wait_until(lambda: any(n.values(s)["frames skipped: no_camera_info"] == "1"
                                  for s in n.statuses(": processing")), timeout=10)
    assert any("no valid camera_info on /camera/camera_info" in w for w in n.warnings()), n.warnings()
    assert n.poses.messages == []


def test_startup_line_names_the_topics_after_remapping(node_setup, ros_context, capfd):
    """The start-up line used to print the parameter values; with remapping (or a namespace and a
    relative topic) those are not the topics the node listens on."""
    from pose6d_ros.ros.estimator_node import EstimatorNode

    _, _, model, _, _ = node_setup
    node = EstimatorNode(context=ros_context, cli_args=[
        "--ros-args", "-p", f"model:={model}", "-p", f"objects:={REGISTRY_YAML}", "-r", "__ns:=/robot",
        "-p", "detections_topic:=detections", "-r", "/camera/image_raw:=/cam0/image", "-p", "poses_topic:=poses"])
    try:
        assert node.topics == {"image": "/cam0/image", "camera_info": "/camera/camera_info",
                               "detections": "/robot/detections"}
    finally:
        node.destroy_node()
    err = capfd.readouterr().err
    ready = [ln for ln in err.splitlines() if "pose estimator ready" in ln]
    assert len(ready) == 1, err
    assert ("listening on /cam0/image, /camera/camera_info, /robot/detections" in ready[0]
            and "publishing /robot/poses, /robot/pose6d_estimator/detections, /diagnostics" in ready[0]), ready[0]
