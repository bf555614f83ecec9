"""Pairing of images with detection arrays (and camera models with frames) by stamp, in plain Python.

No rclpy here: the node feeds messages in with their stamps (integer nanoseconds), sizes and arrival
times, and this module decides what pairs, what waits, and what is dropped and why; the rules are
testable without a ROS graph.

- :class:`FramePairer`: images and detection arrays wait in two caches until their partner arrives.
  ``"exact"`` pairs equal stamps; ``"approximate"`` pairs the waiting partner nearest in stamp within
  a tolerance (for detectors that restamp). The caches are bounded by count (each) and by bytes (both
  together): the oldest waiting message of either cache is dropped first, so a flood on one input
  cannot push out a fresh message of the other.
- :class:`CameraSync`: the camera model of a frame: the one with the frame's stamp, else the latest
  one, and "wait" while the frame's own CameraInfo may still be on its way.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Optional, Tuple, TypeVar

#: Why a waiting message was dropped without a partner.
DROP_REASONS = {
    "cache_size": "more messages waiting than cache_size",
    "cache_bytes": "the waiting messages exceeded cache_max_mb",
    "duplicate_stamp": "a newer message on the same input carried the same stamp",
}

SYNC_MODES = ("exact", "approximate")


def stamp_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` (or anything with ``sec`` and ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def format_offset_ns(offset: int) -> str:
    """A signed stamp offset in words a user can act on: ``+1 ns``, ``-2.5 ms``, ``+1.200 s``."""
    sign = "+" if offset >= 0 else "-"
    a = abs(offset)
    if a < 1_000:
        return f"{sign}{a} ns"
    if a < 1_000_000:
        return f"{sign}{a / 1e3:.1f} us"
    if a < 1_000_000_000:
        return f"{sign}{a / 1e6:.1f} ms"
    return f"{sign}{a / 1e9:.3f} s"


@dataclass
class Waiting:
    """One message waiting for its partner."""

    msg: Any
    stamp: int  # ns
    nbytes: int
    arrived: float  # monotonic seconds


class _Cache:
    """Waiting messages of one input by stamp, in arrival order."""

    def __init__(self, max_count: int):
        self.max_count = max_count
        self.entries: "OrderedDict[int, Waiting]" = OrderedDict()
        self.nbytes = 0
        self.dropped: Counter = Counter()  # reason -> count
        self.last_stamp: Optional[int] = None  # of the last message received, paired or not

    def put(self, entry: Waiting) -> None:
        old = self.entries.pop(entry.stamp, None)
        if old is not None:
            self.nbytes -= old.nbytes
            self.dropped["duplicate_stamp"] += 1
        self.entries[entry.stamp] = entry
        self.nbytes += entry.nbytes

    def take(self, stamp: int) -> Waiting:
        entry = self.entries.pop(stamp)
        self.nbytes -= entry.nbytes
        return entry

    def drop_oldest(self, reason: str) -> Waiting:
        _, entry = self.entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        self.dropped[reason] += 1
        return entry

    def oldest_arrival(self) -> float:
        return next(iter(self.entries.values())).arrived if self.entries else float("inf")

    def nearest(self, stamp: int) -> Optional[int]:
        """The waiting stamp nearest to ``stamp`` (None when empty). At most ``cache_size`` entries."""
        return min(self.entries, key=lambda s: abs(s - stamp)) if self.entries else None


@dataclass
class Pair:
    """An image and its detection array, ready to process."""

    image: Any
    detections: Any
    stamp: int  # the image's stamp, ns
    ready: float  # monotonic time the second of the two arrived
    nbytes: int = 0  # of the image, as counted by the cache


class FramePairer:
    """Images and detection arrays in, pairs out.

    Args:
        mode: ``"exact"`` (equal stamps) or ``"approximate"`` (the nearest waiting partner within
            ``tolerance_ns``; greedy: a message pairs as soon as one partner is within tolerance).
        tolerance_ns: the approximate mode's largest stamp difference, nanoseconds.
        max_count: messages each cache holds at most.
        max_bytes: bytes both caches hold at most together; a single larger message is still kept
            (alone), so that a frame bigger than the budget can pair at all.
    """

    def __init__(self, mode: str = "exact", tolerance_ns: int = 0, max_count: int = 30,
                 max_bytes: int = 256 * 2**20):
        if mode not in SYNC_MODES:
            raise ValueError(f"sync mode must be one of {list(SYNC_MODES)}, got {mode!r}")
        self.mode, self.tolerance_ns, self.max_bytes = mode, int(tolerance_ns), int(max_bytes)
        self.images, self.detections = _Cache(max_count), _Cache(max_count)
        self.paired = 0

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.detections.nbytes

    def add_image(self, msg, stamp: int, nbytes: int, now: float) -> Optional[Pair]:
        partner = self._partner(self.detections, stamp)
        self.images.last_stamp = stamp
        if partner is not None:
            self.paired += 1
            return Pair(msg, self.detections.take(partner).msg, stamp, now, nbytes)
        self._wait(self.images, Waiting(msg, stamp, nbytes, now))
        return None

    def add_detections(self, msg, stamp: int, nbytes: int, now: float) -> Optional[Pair]:
        partner = self._partner(self.images, stamp)
        self.detections.last_stamp = stamp
        if partner is not None:
            self.paired += 1
            image = self.images.take(partner)
            return Pair(image.msg, msg, partner, now, image.nbytes)
        self._wait(self.detections, Waiting(msg, stamp, nbytes, now))
        return None

    def _partner(self, other: _Cache, stamp: int) -> Optional[int]:
        if self.mode == "exact":
            return stamp if stamp in other.entries else None
        nearest = other.nearest(stamp)
        return nearest if nearest is not None and abs(nearest - stamp) <= self.tolerance_ns else None

    def _wait(self, cache: _Cache, entry: Waiting) -> None:
        cache.put(entry)
        while len(cache.entries) > cache.max_count:
            cache.drop_oldest("cache_size")
        while self.nbytes > self.max_bytes and len(self.images.entries) + len(self.detections.entries) > 1:
            older = self.images if self.images.oldest_arrival() <= self.detections.oldest_arrival() else self.detections
            older.drop_oldest("cache_bytes")

    def stale(self, now: float, age_s: float) -> Tuple[int, int]:
        """(images, detection arrays) that have waited longer than ``age_s`` seconds."""
        cutoff = now - age_s
        return (sum(1 for e in self.images.entries.values() if e.arrived < cutoff),
                sum(1 for e in self.detections.entries.values() if e.arrived < cutoff))

    def unpaired_offset(self) -> Optional[int]:
        """Stamp offset (ns) from the newest waiting image to the detection array nearest to it
        (waiting, or else the last one received): positive when the detections are later. ``None``
        when no image waits or no detection array was ever received."""
        if not self.images.entries:
            return None
        image_stamp = next(reversed(self.images.entries))
        nearest = self.detections.nearest(image_stamp)
        candidates = [s for s in (nearest, self.detections.last_stamp) if s is not None]
        if not candidates:
            return None
        return min(candidates, key=lambda s: abs(s - image_stamp)) - image_stamp


T = TypeVar("T")


class CameraSync(Generic[T]):
    """Camera models by stamp, for frames.

    A frame takes the camera model with its own stamp when it has come, else the latest one. Only
    while no model has come at all does a frame wait (the first frames of a stream, whose CameraInfo
    may arrive just after them). Waiting for each frame's own CameraInfo as well was tried: under
    load, when a CameraInfo is late or lost, every such frame waited out ``camera_info_wait_s``
    (p50 latency 225 ms against 17 ms at 30 Hz in ``benchmarks/node_load.py``), while intrinsics
    that change from frame to frame are rare.

    Args:
        max_count: models kept by stamp.
    """

    def __init__(self, max_count: int = 64):
        self.max_count = max_count
        self.by_stamp: "OrderedDict[int, T]" = OrderedDict()
        self.latest: Optional[T] = None

    def add(self, stamp: int, model: T) -> None:
        self.by_stamp[stamp] = model
        self.by_stamp.move_to_end(stamp)
        while len(self.by_stamp) > self.max_count:
            self.by_stamp.popitem(last=False)
        self.latest = model

    def match(self, stamp: int) -> Tuple[Optional[T], bool]:
        """``(model, wait)``: the model for a frame stamped ``stamp``, or ``(None, True)`` while no
        model has come yet."""
        model = self.by_stamp.get(stamp)
        if model is not None:
            return model, False
        return self.latest, self.latest is None

    def give_up(self) -> Optional[T]:
        """The model for a frame that waited long enough: the latest one (or None)."""
        return self.latest

