"""What the estimator node accepts as input: plausible cameras only, boxes and depths within its limits,
CameraInfo arriving after its image, compressed images. Real rclpy graph, node built in this process."""

from __future__ import annotations

import time
from collections import Counter

from node_fixtures import InProcessNode, camera_info_msg, direct_estimate, frame_messages, stamp, wait_until


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
