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

    registry, _, model, frames, _ = node_setup
    frame = frames[1]
    n = InProcessNode(ros_context, spinner, collector, model, max_depth_m=0.3, diagnostics_period_s=0.5)
    name = registry.get(frame.obj_ids[0]).name
    dets = [conv.Detection(class_id=registry.get(oid).name, box=box, score=0.9)
            for oid, box in zip(frame.obj_ids, frame.boxes)]
    dets.append(conv.Detection(class_id=name, box=(100.0, 100.0, 105.0, 105.0), score=0.9))
    n.send_frame(frame, 0, dets)
    (msg,) = n.poses.wait_for(1, timeout=30)
    expected = direct_estimate(registry, model, frame, dets, max_depth_m=0.3)
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
    be dropped ("no valid camera_info received yet"); it is held and answered. Later frames are not held."""
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
    expected = [e for e in direct_estimate(registry, model, frame, core,
                                           **POSE_PARAMS) if e.ok]
    assert len(msg.poses) == len(expected) > 0
    for p, e in zip(msg.poses, expected):
        assert abs(p.position.z - e.t[2]) < 1e-6
    # once a camera model exists, a frame whose own camera_info has not come is answered at once with
    # the latest one (not held: a late or lost camera_info must not cost every frame the wait)
    img, dets, _ = frame_messages(frame, 1, registry)
    n.pub_img.publish(img)
    n.pub_det.publish(dets)
    got = n.poses.wait_for(2, timeout=30)
    assert [m.header.stamp.sec for m in got] == [1000, 1001]
    assert wait_until(lambda: any(n.values(s)["frames held for camera_info"] == "1"
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


def test_compressed_jpeg_stream_in_poses_out(node_setup, ros_context, spinner, collector, tmp_path):
    """``image_transport: compressed``, the console script as a process: jpeg (and one png) frames on
    ``/camera/image_raw/compressed``, encoded by OpenCV the way image_transport's compressed plugin
    does; each frame's poses equal a direct call on the image OpenCV decodes from the same bytes."""
    import cv2
    import numpy as np
    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header

    from node_fixtures import NodeProcess, input_publishers, wait_subscribed

    registry, _, model, frames, _ = node_setup
    node = NodeProcess("-p", f"model:={model}", "-p", f"objects:={REGISTRY_YAML}", "-p", "image_transport:=compressed",
                       *[a for k, v in POSE_PARAMS.items() for a in ("-p", f"{k}:={v}")], log_path=tmp_path / "node.log")
    try:
        driver = spinner.add(Node("jpeg_camera", context=ros_context))
        poses = collector(driver, PoseArray, "/object_poses")
        pub_jpeg = driver.create_publisher(CompressedImage, "/camera/image_raw/compressed", 10)
        _, pub_info, pub_det = input_publishers(driver)
        assert wait_subscribed(pub_jpeg) and wait_subscribed(pub_det), node.log()
        time.sleep(0.5)
        expected = {}
        for k, frame in enumerate(frames[:4]):
            fmt, ext = ("png", ".png") if k == 3 else ("jpeg", ".jpg")
            ok, buf = cv2.imencode(ext, np.ascontiguousarray(frame.rgb[:, :, ::-1]))
            assert ok
            msg = CompressedImage(header=Header(stamp=stamp(k), frame_id="camera_optical"),
                                  format=f"bgr8; {fmt} compressed bgr8", data=buf.tobytes())
            _, dets, core = frame_messages(frame, k, registry)
            decoded = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
            if fmt == "png":
                assert np.array_equal(decoded, frame.rgb)  # lossless
            ref = type(frame)(decoded, frame.K, frame.obj_ids, frame.poses, frame.boxes)
            expected[1000 + k] = [e for e in direct_estimate(registry, model, ref, core, **POSE_PARAMS) if e.ok]
            pub_info.publish(camera_info_msg(frame, stamp(k)))
            time.sleep(0.05)
            pub_jpeg.publish(msg)
            pub_det.publish(dets)
        got = poses.wait_for(4, timeout=60)
        assert sorted(m.header.stamp.sec for m in got) == sorted(expected), node.log()
        assert sum(len(v) for v in expected.values()) > 0
        for m in got:
            exp = expected[m.header.stamp.sec]
            assert len(m.poses) == len(exp)
            for p, e in zip(m.poses, exp):
                np.testing.assert_allclose([p.position.x, p.position.y, p.position.z], e.t, atol=1e-6)
        assert "Traceback" not in node.log() and "compressed images" in node.log()
    finally:
        node.stop()


def test_bad_compressed_images_are_skipped_with_reasons(node_setup, ros_context, spinner, collector):
    """Undecodable bytes (bad_image, naming CompressedImage.data) and a jpeg whose size differs from
    camera_info's (camera_info_mismatch, known only after decoding) are skipped and counted."""
    import cv2
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header

    registry, _, model, frames, _ = node_setup
    frame = frames[0]
    n = InProcessNode(ros_context, spinner, collector, model, image_transport="compressed", diagnostics_period_s=0.5)
    pub_jpeg = n.test_node.create_publisher(CompressedImage, "/camera/image_raw/compressed", 10)
    assert wait_until(lambda: pub_jpeg.get_subscription_count() > 0)
    small = cv2.imencode(".jpg", cv2.resize(frame.rgb[:, :, ::-1], (160, 120)))[1].tobytes()
    for k, data in enumerate([b"\xff\xd8 not a jpeg", small]):
        n.pub_info.publish(camera_info_msg(frame, stamp(k)))
        time.sleep(0.05)
        _, dets, _ = frame_messages(frame, k, registry)
        pub_jpeg.publish(CompressedImage(header=Header(stamp=stamp(k)), format="jpeg", data=data))
        n.pub_det.publish(dets)
    def skipped(s):
        v = n.values(s)
        return v["frames skipped: bad_image"], v["frames skipped: camera_info_mismatch"]
    assert wait_until(lambda: any(skipped(s) == ("1", "1") for s in n.statuses(": processing")), timeout=10), \
        n.warnings()
    assert any("[bad_image] CompressedImage.data" in w for w in n.warnings()), n.warnings()
    assert any("image is 160x120 but camera_info says 320x240" in w for w in n.warnings()), n.warnings()


def test_frames_held_for_camera_info_count_against_cache_max_mb(node_setup, ros_context, spinner, collector):
    """No camera_info, a long wait (10 s) and 0.5 MiB of cache (two 320x240 images): of four frames two
    are held, the two oldest go on at once (skipped: no camera_info) instead of holding 4 images."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, camera_info_wait_s=10.0, cache_max_mb=0.5,
                      diagnostics_period_s=0.5)
    for k in range(4):
        img, dets, _ = frame_messages(frames[0], k, registry)
        n.pub_img.publish(img)
        n.pub_det.publish(dets)
        time.sleep(0.05)
    def state(s):
        v = n.values(s)
        return v.get("frames waiting for camera_info"), v.get("frames skipped: no_camera_info")
    assert wait_until(lambda: any(state(s) == ("2", None) for s in n.statuses(": pairing"))
                      and any(state(s) == (None, "2") for s in n.statuses(": processing")), timeout=8)
