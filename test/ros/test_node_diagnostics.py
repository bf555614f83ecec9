"""The estimator node says what is wrong when it publishes nothing, reports its health on /diagnostics,
pairs restamped detections in the approximate mode, and bounds its caches and its detections per frame.

Real rclpy graph: the node is built in this process (``InProcessNode``), its inputs are published and
its outputs, ``/diagnostics`` and its log lines (``/rosout``) are received over DDS.
"""

from __future__ import annotations

import math
import time

import numpy as np

from node_fixtures import (POSE_PARAMS, InProcessNode, camera_info_msg, direct_estimate, frame_messages, stamp,
                           wait_until)

ERROR, WARN, OK = b"\x02", b"\x01", b"\x00"


def _last(statuses, predicate=lambda s: True):
    matching = [s for s in statuses if predicate(s)]
    return matching[-1] if matching else None


def _send(n: InProcessNode, frame, k: int, registry, image=True, detections=True, det_stamp=None, info=True):
    img, dets, _ = frame_messages(frame, k, registry, det_stamp=det_stamp)
    if info:
        n.pub_info.publish(camera_info_msg(frame, stamp(k)))
    if image:
        n.pub_img.publish(img)
    if detections:
        n.pub_det.publish(dets)
    time.sleep(0.05)


def test_detections_1ns_off_their_images_are_reported(node_setup, ros_context, spinner, collector):
    """Exact pairing, detections stamped 1 ns after their images: nothing can pair. The node used to
    stay silent forever; it must name both topics and the offset within a few seconds."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, diagnostics_period_s=0.5)
    for k in range(8):
        _send(n, frames[k % len(frames)], k, registry, det_stamp=stamp(k, nanosec=18))
    assert wait_until(lambda: any("+1 ns" in w for w in n.warnings()), timeout=10), n.warnings()
    warning = next(w for w in n.warnings() if "+1 ns" in w)
    assert "/camera/image_raw" in warning and "/detections" in warning and "sync:=approximate" in warning, warning
    assert wait_until(lambda: _last(n.statuses(": pairing"), lambda s: s.level == ERROR) is not None, timeout=10)
    status = _last(n.statuses(": pairing"), lambda s: s.level == ERROR)
    values = n.values(status)
    assert values["nearest stamp offset (s)"] == "0.000000001"
    assert values["frames paired"] == "0" and values["sync"] == "exact"
    assert status.name == "pose6d_estimator: pairing" and status.hardware_id == f"cpu:{model.name}"
    assert n.poses.messages == []


def test_approximate_sync_pairs_restamped_detections(node_setup, ros_context, spinner, collector):
    """The same 1-ns-off stream with ``sync: approximate`` gives the poses of exact pairing."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, sync="approximate", sync_tolerance_s=0.001,
                      **POSE_PARAMS)
    for k, frame in enumerate(frames[:4]):
        # Detections first for odd frames, and restamped 1 ns to 0.9 ms later.
        img, dets, core = frame_messages(frame, k, registry, det_stamp=stamp(k, nanosec=17 + 900_000 * (k % 2) + 1))
        n.pub_info.publish(camera_info_msg(frame, stamp(k)))
        for pub, msg in ([(n.pub_det, dets), (n.pub_img, img)] if k % 2 else [(n.pub_img, img), (n.pub_det, dets)]):
            pub.publish(msg)
        time.sleep(0.05)
    got = n.poses.wait_for(4, timeout=30)
    assert len(got) == 4, n.warnings()
    by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in got}
    assert sum(len(m.poses) for m in got) > 0, "no pose at all: the comparison would be empty"
    for k, frame in enumerate(frames[:4]):
        _, _, core = frame_messages(frame, k, registry)
        expected = [e for e in direct_estimate(registry, model, frame, core, **POSE_PARAMS) if e.ok]
        msg = by_stamp[(1000 + k, 17)]  # the image's stamp
        assert len(msg.poses) == len(expected)
        for p, e in zip(msg.poses, expected):
            np.testing.assert_allclose([p.position.x, p.position.y, p.position.z], e.t, atol=1e-6)


def test_only_images_alive_is_reported_and_drops_counted(node_setup, ros_context, spinner, collector):
    """Images and camera_info but no detections: the node names the silent topic and counts the images
    the bounded cache drops (12 sent, cache_size 5 -> 7 dropped)."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, cache_size=5, diagnostics_period_s=0.5)
    for k in range(12):
        _send(n, frames[0], k, registry, detections=False)
    assert wait_until(lambda: any("none was ever received on /detections" in w for w in n.warnings()),
                      timeout=10), n.warnings()
    assert wait_until(lambda: any("nothing received on /detections" in w for w in n.warnings()), timeout=10)
    assert wait_until(lambda: any("dropped unpaired" in w for w in n.warnings()), timeout=10), n.warnings()
    assert wait_until(lambda: _last(n.statuses(": pairing"),
                                    lambda s: n.values(s)["images dropped: cache_size"] == "7") is not None)
    values = n.values(_last(n.statuses(": pairing")))
    assert values["images dropped"] == "7" and values["images waiting"] == "5"
    assert any(float(n.values(s)["dropped rate (Hz)"]) > 0 for s in n.statuses(": pairing"))
    inputs = _last(n.statuses(": inputs"), lambda s: n.values(s)["image received"] == "12")
    assert inputs is not None and inputs.level == WARN
    assert n.values(inputs)["detections received"] == "0" and n.values(inputs)["detections rate (Hz)"] == "0.00"


def test_cache_bounded_by_bytes(node_setup, ros_context, spinner, collector):
    """``cache_max_mb`` = 0.5 MiB holds two 320x240 rgb images (230,400 bytes each): of six waiting
    images the four oldest are dropped, and only the last two frames can still be answered."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, cache_max_mb=0.5, diagnostics_period_s=0.5)
    frame = frames[0]
    assert frame.rgb.nbytes == 230_400
    for k in range(6):
        _send(n, frame, k, registry, detections=False)
    assert wait_until(lambda: _last(n.statuses(": pairing"),
                                    lambda s: n.values(s)["images dropped: cache_bytes"] == "4") is not None)
    values = n.values(_last(n.statuses(": pairing")))
    assert values["images waiting"] == "2" and values["cache bytes"] == str(2 * 230_400)
    assert int(values["cache bytes"]) <= int(values["cache limit bytes"]) == 2**19
    for k in range(6):
        _send(n, frame, k, registry, image=False, info=False)
    got = n.poses.wait_for(2, timeout=30)
    time.sleep(1.0)
    assert sorted(m.header.stamp.sec - 1000 for m in n.poses.messages) == [4, 5], [m.header for m in got]


def test_diagnostics_of_a_working_stream(node_setup, ros_context, spinner, collector):
    """Six good frames: all paired and processed, latency percentiles reported, inputs OK."""
    registry, _, model, frames, _ = node_setup
    n = InProcessNode(ros_context, spinner, collector, model, diagnostics_period_s=0.5)
    for k, frame in enumerate(frames):
        _send(n, frame, k, registry)
    assert len(n.poses.wait_for(len(frames), timeout=30)) == len(frames)
    assert wait_until(lambda: _last(n.statuses(": processing"),
                                    lambda s: n.values(s)["frames processed"] == str(len(frames))) is not None)
    processing = n.values(_last(n.statuses(": processing")))
    p50, p99 = float(processing["latency p50 (ms)"]), float(processing["latency p99 (ms)"])
    assert math.isfinite(p50) and 0.0 < p50 <= p99
    assert processing["latency window (frames)"] == str(len(frames))
    assert processing["frames skipped"] == "0"
    pairing = n.values(_last(n.statuses(": pairing")))
    assert pairing["frames paired"] == str(len(frames)) and pairing["images dropped"] == "0"
    assert any(s.level == OK and float(n.values(s)["image rate (Hz)"]) > 0 for s in n.statuses(": inputs"))
    inputs = n.values(_last(n.statuses(": inputs")))
    assert (inputs["image topic"], inputs["camera_info topic"], inputs["detections topic"]) == (
        "/camera/image_raw", "/camera/camera_info", "/detections")


def test_max_detections_keeps_the_highest_scores(node_setup, ros_context, spinner, collector):
    """12 detections (the frame's boxes repeated with falling scores), ``max_detections`` 4: the node
    estimates exactly the four best, as a direct call on those four does, and counts the other 8."""
    from pose6d_ros.ros import conversions as conv

    registry, _, model, frames, _ = node_setup
    frame = frames[0]
    n = InProcessNode(ros_context, spinner, collector, model, max_detections=4, diagnostics_period_s=0.5,
                      **POSE_PARAMS)
    names = [registry.get(oid).name for oid in frame.obj_ids]
    rng = np.random.default_rng(0)
    scores = rng.permutation(np.linspace(0.5, 0.95, 12))
    dets = [conv.Detection(class_id=names[i % len(names)], box=frame.boxes[i % len(names)], score=float(s))
            for i, s in enumerate(scores)]
    n.send_frame(frame, 0, dets)
    (msg,) = n.poses.wait_for(1, timeout=30)
    best = sorted(np.argsort(-scores)[:4])
    direct = direct_estimate(registry, model, frame, [dets[i] for i in best], **POSE_PARAMS)
    expected = [e for e in direct if e.ok]
    assert expected, "no pose at all: the comparison would be empty"
    assert len(msg.poses) == len(expected)
    for p, e in zip(msg.poses, expected):
        np.testing.assert_allclose([p.position.x, p.position.y, p.position.z], e.t, atol=1e-6)
    (d3,) = n.det3d.wait_for(1, timeout=10)
    published = sorted(r.hypothesis.score for d in d3.detections for r in d.results)
    np.testing.assert_allclose(published, sorted(scores[i] for i, e in zip(best, direct) if e.ok), atol=1e-6)
    assert wait_until(lambda: _last(n.statuses(": processing"),
                                    lambda s: n.values(s)["detections skipped: too_many_detections"] == "8")
                      is not None)
    assert any("max_detections = 4" in w for w in n.warnings()), n.warnings()

