"""The pairing rules without a graph: exact and approximate stamps, bounds by count and bytes, the
offset reported for unpaired messages, camera models by stamp."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pose6d_ros.ros.pairing import CameraSync, FramePairer, format_offset_ns, stamp_ns

S = 1_000_000_000


def test_exact_pairs_equal_stamps_in_either_order():
    p = FramePairer("exact")
    assert p.add_image("img0", 5 * S, 100, now=0.0) is None
    pair = p.add_detections("det0", 5 * S, 10, now=0.5)
    assert (pair.image, pair.detections, pair.stamp, pair.ready, pair.nbytes) == ("img0", "det0", 5 * S, 0.5, 100)
    assert p.add_detections("det1", 6 * S, 10, now=1.0) is None
    pair = p.add_image("img1", 6 * S, 100, now=1.2)
    assert (pair.image, pair.detections, pair.stamp, pair.nbytes) == ("img1", "det1", 6 * S, 100)
    assert p.paired == 2 and p.nbytes == 0
    # one nanosecond off never pairs exactly; the offset is reported as detections minus image
    assert p.add_image("img2", 7 * S, 100, now=2.0) is None
    assert p.add_detections("det2", 7 * S + 1, 10, now=2.0) is None
    assert p.unpaired_offset() == 1


def test_approximate_pairs_the_nearest_within_tolerance():
    p = FramePairer("approximate", tolerance_ns=10_000_000)  # 10 ms
    p.add_detections("far", 100 * S + 9_000_000, 10, now=0.0)
    p.add_detections("near", 100 * S - 2_000_000, 10, now=0.0)
    pair = p.add_image("img", 100 * S, 100, now=0.1)
    assert pair.detections == "near" and pair.stamp == 100 * S
    # 11 ms away: outside the tolerance, both wait
    assert p.add_image("img2", 200 * S, 100, now=0.2) is None
    assert p.add_detections("det2", 200 * S + 11_000_000, 10, now=0.2) is None
    assert p.unpaired_offset() == 11_000_000


def test_count_bound_drops_the_oldest():
    p = FramePairer("exact", max_count=3)
    for k in range(5):
        p.add_image(f"img{k}", k * S, 100, now=float(k))
    assert list(p.images.entries) == [2 * S, 3 * S, 4 * S]
    assert p.images.dropped["cache_size"] == 2
    p.add_image("again", 4 * S, 100, now=9.0)
    assert p.images.dropped["duplicate_stamp"] == 1 and p.images.entries[4 * S].msg == "again"
    assert p.nbytes == 300


def test_byte_bound_is_shared_and_drops_the_oldest_of_either_input():
    p = FramePairer("exact", max_count=100, max_bytes=3_500)
    p.add_detections("det-old", 1 * S, 200, now=0.0)
    for k in range(2, 8):  # six 1000-byte images, all without partner
        p.add_image(f"img{k}", k * S, 1_000, now=float(k))
    # budget 3500: the oldest waiting message (the detection array) went first, then the oldest images
    assert p.detections.dropped["cache_bytes"] == 1 and p.images.dropped["cache_bytes"] == 3
    assert list(p.images.entries) == [5 * S, 6 * S, 7 * S] and p.nbytes == 3_000
    # a fresh detection array is newer than every image: the flood of images cannot push it out
    p.add_detections("det-new", 99 * S, 600, now=10.0)
    assert 99 * S in p.detections.entries and list(p.images.entries) == [6 * S, 7 * S]
    # a single message bigger than the budget is still kept, alone
    p.add_image("huge", 100 * S, 10_000, now=11.0)
    assert list(p.images.entries) == [100 * S] and not p.detections.entries


def test_stale_counts_by_arrival_age():
    p = FramePairer("exact")
    p.add_image("a", 1, 1, now=0.0)
    p.add_image("b", 2, 1, now=5.0)
    p.add_detections("c", 3, 1, now=0.5)
    assert p.stale(now=5.6, age_s=1.0) == (1, 1)


@pytest.mark.parametrize("offset,text", [(1, "+1 ns"), (-999, "-999 ns"), (2_500, "+2.5 us"),
                                         (-2_500_000, "-2.5 ms"), (1_200_000_000, "+1.200 s")])
def test_offsets_in_words(offset, text):
    assert format_offset_ns(offset) == text


def test_stamp_ns():
    assert stamp_ns(SimpleNamespace(sec=3, nanosec=17)) == 3 * S + 17


def test_camera_sync_takes_the_stamped_model_else_the_latest_and_waits_only_for_the_first():
    c: CameraSync[str] = CameraSync(max_count=2)
    assert c.match(10) == (None, True)  # nothing yet: the frame waits
    assert c.give_up() is None
    c.add(10, "cam10")
    assert c.match(10) == ("cam10", False)  # same stamp
    assert c.match(11) == ("cam10", False)  # its own has not come: the latest, at once
    c.add(11, "cam11")
    c.add(12, "cam12")
    assert c.match(11) == ("cam11", False)
    assert c.match(10) == ("cam12", False)  # beyond max_count: the latest
    assert c.give_up() == "cam12"
