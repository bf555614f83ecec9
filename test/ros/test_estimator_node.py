"""The estimator node on a real ROS 2 graph: it equals a direct `Estimator` call, and bad input
never kills it or puts a NaN in a message."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from node_fixtures import (POSE_PARAMS, REGISTRY_YAML, NodeProcess, all_finite_pose_array, camera_info_msg,
                           frame_messages, input_publishers, stamp, wait_subscribed)


@pytest.fixture(scope="module")
def setup(node_setup):
    return node_setup


def _all_finite_det3d(msg):
    vals = []
    for d in msg.detections:
        for r in d.results:
            p = r.pose.pose
            vals += [r.hypothesis.score, p.position.x, p.position.y, p.position.z, p.orientation.w]
        vals += [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z, d.bbox.center.position.z]
    return all(math.isfinite(v) for v in vals)


def test_node_matches_direct_estimator(setup, ros_context, spinner, collector, tmp_path):
    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node
    from scipy.spatial.transform import Rotation
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    from pose6d_ros.geometry.camera import CameraModel
    from pose6d_ros.runtime.estimator import Estimator

    registry, ids, model, frames, _ = setup
    node = NodeProcess("-p", f"model:={model}", "-p", f"objects:={REGISTRY_YAML}", "-p", "publish_tf:=true",
                       "-p", "publish_debug_image:=true", "-p", "publish_markers:=true",
                       *[a for k, v in POSE_PARAMS.items() for a in ("-p", f"{k}:={v}")],
                       log_path=tmp_path / "node.log")
    try:
        test_node = spinner.add(Node("replayer", context=ros_context))
        poses = collector(test_node, PoseArray, "/object_poses")
        det3d = collector(test_node, Detection3DArray, "/pose6d_estimator/detections")
        tfs = collector(test_node, TFMessage, "/tf")
        pub_img, pub_info, pub_det = input_publishers(test_node)
        assert wait_subscribed(pub_img), node.log()
        time.sleep(1.0)
        # the node's limits
        direct = Estimator(str(model), registry, backend="onnxruntime", device="cpu", min_score=0.3, min_box_px=8.0,
                           depth_range=(0.05, POSE_PARAMS.get("max_depth_m", 20.0)))
        expected = []
        for k, frame in enumerate(frames):
            img, dets_msg, dets = frame_messages(frame, k, registry)
            pub_info.publish(camera_info_msg(frame, stamp(k)))
            time.sleep(0.1)
            # Detections before the image for odd frames: pairing must not depend on arrival order.
            for msg, pub in ([(dets_msg, pub_det), (img, pub_img)] if k % 2 else [(img, pub_img), (dets_msg, pub_det)]):
                pub.publish(msg)
            cam = CameraModel(K=frame.K, width=frame.rgb.shape[1], height=frame.rgb.shape[0],
                              distortion_model="plumb_bob", D=np.zeros(5))
            expected.append(direct.estimate(frame.rgb, cam, dets))
            poses.wait_for(k + 1, timeout=30)
        got = poses.wait_for(len(frames), timeout=30)
        assert len(got) == len(frames), node.log()
        det3d.wait_for(len(frames), timeout=10)
        by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in got}
        d3_by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in det3d.messages}
        n_ok = 0
        for k, (frame, est) in enumerate(zip(frames, expected)):
            msg = by_stamp[(1000 + k, 17)]
            assert msg.header.frame_id == "camera_optical"
            ok = [e for e in est if e.ok]
            assert len(msg.poses) == len(ok)
            d3 = d3_by_stamp[(1000 + k, 17)]
            assert [d.results[0].hypothesis.class_id for d in d3.detections] == [str(e.class_id) for e in ok]
            for p, e in zip(msg.poses, ok):
                np.testing.assert_allclose([p.position.x, p.position.y, p.position.z], e.t, atol=1e-6)
                q = [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
                np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), e.R, atol=1e-6)
                n_ok += 1
            # ADD at 10% of the diameter, against the GT of the independent renderer.
            for e, oid, T in zip(est, frame.obj_ids, frame.poses):
                if not e.ok:
                    continue
                pts = np.asarray(registry.get(oid).keypoints)
                err = np.linalg.norm((pts @ e.R.T + e.t) - (pts @ T[:3, :3].T + T[:3, 3]), axis=1).mean()
                passed_direct = err < 0.1 * registry.get(oid).diameter
                idx = [i for i, x in enumerate(ok) if x is e][0]
                p = msg.poses[idx]
                q = [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
                Rn, tn = Rotation.from_quat(q).as_matrix(), np.array([p.position.x, p.position.y, p.position.z])
                err_node = np.linalg.norm((pts @ Rn.T + tn) - (pts @ T[:3, :3].T + T[:3, 3]), axis=1).mean()
                if passed_direct:
                    assert err_node < 0.1 * registry.get(oid).diameter
        assert n_ok > 0, "no pose was estimated at all"
        tf_frames = {t.child_frame_id for m in tfs.wait_for(1, timeout=5) for t in m.transforms}
        assert any(f.endswith("_0") for f in tf_frames), tf_frames
        assert all(all_finite_pose_array(m) for m in got)
        assert node.alive(), node.log()
    finally:
        node.stop()


def test_missing_model_exits_nonzero_with_clear_error(tmp_path):
    node = NodeProcess("-p", f"model:={tmp_path / 'nope.onnx'}", "-p", f"objects:={REGISTRY_YAML}",
                       log_path=tmp_path / "node.log")
    code = node.proc.wait(timeout=120)
    node.stop()
    assert code != 0
    log = node.log_path.read_text()
    assert "nope.onnx" in log and "Traceback" not in log, log


def test_fuzzing_never_kills_the_node_or_publishes_nan(setup, ros_context, spinner, collector, tmp_path):
    from geometry_msgs.msg import PoseArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, Detection2DArray, Detection3DArray, ObjectHypothesisWithPose

    registry, ids, model, frames, _ = setup
    node = NodeProcess("-p", f"model:={model}", "-p", f"objects:={REGISTRY_YAML}", "-p", "warn_throttle_s:=2.0",
                       log_path=tmp_path / "node.log")
    rng = np.random.default_rng(11)
    names = list(registry.names) + ["", "unknown", "999", "-1", "3.5", "duck ", "\u00e9t\u00e9"]
    floats = [0.0, -1.0, 1e9, -1e9, float("nan"), float("inf"), float("-inf"), 1e-12, 5.0, 300.0]
    try:
        test_node = spinner.add(Node("fuzzer", context=ros_context))
        poses = collector(test_node, PoseArray, "/object_poses")
        det3d = collector(test_node, Detection3DArray, "/pose6d_estimator/detections")
        pub_img, pub_info, pub_det = input_publishers(test_node)
        assert wait_subscribed(pub_img), node.log()
        time.sleep(1.0)
        frame = frames[0]
        sent = 0
        for k in range(400):
            st = stamp(10_000 + k)
            header = Header(stamp=st, frame_id=str(rng.choice(["cam", "", "x" * 300])))
            # camera_info: valid most of the time, else garbage K / D / size
            info = camera_info_msg(frame, st)
            r = rng.random()
            if r < 0.2:
                info.k = [float(rng.choice(floats)) for _ in range(9)]
            elif r < 0.3:
                info.d = [float(rng.choice(floats)) for _ in range(int(rng.integers(0, 9)))]
                info.distortion_model = str(rng.choice(["plumb_bob", "rational_polynomial", "equidistant", ""]))
            elif r < 0.35:
                info.width, info.height = int(rng.integers(0, 2000)), int(rng.integers(0, 2000))
            pub_info.publish(info)
            # image: valid, or wrong encoding / size / step / data
            h, w = frame.rgb.shape[:2]
            img = Image(header=header, height=h, width=w, encoding="rgb8", step=w * 3, data=frame.rgb.tobytes())
            r = rng.random()
            if r < 0.15:
                img.encoding = str(rng.choice(["16UC1", "yuv422", "", "bayer_rggb8", "32FC1"]))
            elif r < 0.3:
                img.data = rng.integers(0, 256, int(rng.integers(0, h * w * 3)), dtype=np.uint8).tobytes()
            elif r < 0.4:
                img.step = int(rng.integers(0, w * 3))
            elif r < 0.45:
                img.height, img.width = int(rng.integers(0, 50)), int(rng.integers(0, 50))
            elif r < 0.55:
                img.encoding = str(rng.choice(["mono8", "bgra8", "rgba8"]))
                ch = {"mono8": 1, "bgra8": 4, "rgba8": 4}[img.encoding]
                img.step = w * ch
                img.data = rng.integers(0, 256, h * w * ch, dtype=np.uint8).tobytes()
            pub_img.publish(img)
            # detections: random classes, boxes and scores, many NaN/inf/negative/huge
            arr = Detection2DArray(header=header)
            for _ in range(int(rng.integers(0, 8))):
                d = Detection2D()
                d.bbox.center.position.x = float(rng.choice(floats + [float(rng.uniform(-50, 400))]))
                d.bbox.center.position.y = float(rng.choice(floats + [float(rng.uniform(-50, 300))]))
                d.bbox.size_x = float(rng.choice(floats + [float(rng.uniform(1, 200))]))
                d.bbox.size_y = float(rng.choice(floats + [float(rng.uniform(1, 200))]))
                for _ in range(int(rng.integers(0, 3))):
                    hyp = ObjectHypothesisWithPose()
                    hyp.hypothesis.class_id = str(rng.choice(names))
                    hyp.hypothesis.score = float(rng.choice(floats + [float(rng.random())]))
                    d.results.append(hyp)
                arr.detections.append(d)
            pub_det.publish(arr)
            sent += 3
            if k % 50 == 0:
                time.sleep(0.2)
                assert node.alive(), node.log()
        # unpaired stamps flood the bounded caches too
        for k in range(100):
            pub_det.publish(Detection2DArray(header=Header(stamp=stamp(50_000 + k))))
            sent += 1
        assert sent >= 1000
        time.sleep(3.0)
        assert node.alive(), node.log()
        # Still working: one good frame after the storm is answered.
        before = len(poses.messages)
        pub_info.publish(camera_info_msg(frame, stamp(90_000)))
        time.sleep(0.3)
        img, dets_msg, _ = frame_messages(frame, 90_000 - 1000, registry)
        pub_img.publish(img)
        pub_det.publish(dets_msg)
        poses.wait_for(before + 1, timeout=30)
        assert any(m.header.stamp.sec == 90_000 for m in poses.messages), node.log()
        assert all(all_finite_pose_array(m) for m in poses.messages)
        assert all(_all_finite_det3d(m) for m in det3d.messages)
        log = node.log()
        assert "Traceback" not in log, log
        warnings = [line for line in log.splitlines() if "WARN" in line]
        assert warnings, "bad input produced no warning"
        assert len(warnings) < sent / 5, f"{len(warnings)} warnings for {sent} messages: not throttled"
    finally:
        node.stop()
