"""The estimator node's health: counters, the periodic report (``diagnostic_msgs/DiagnosticArray`` on
``/diagnostics``), and the warnings it raises when the node publishes nothing.

Three statuses, named ``"<node name>: inputs"``, ``"<node name>: pairing"`` and ``"<node name>:
processing"``, each with a level (OK / WARN / ERROR), a one-line message, the hardware id
(``"<device>:<model file>"``) and a fixed set of keys (every reason is always listed, 0 when it never
happened) so that tools can read them by name. Totals count since start; rates and the ``in the last
period`` parts of messages cover the time since the previous report. The key layout is in the README
(ROS interface) and :func:`build_report`.

Plain Python apart from the message types, so the rules are tested without a graph.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from pose6d_ros.ros.pairing import DROP_REASONS, FramePairer, format_offset_ns

#: Why a whole frame (image + detection array) produced no output.
FRAME_SKIP_REASONS = {
    "no_camera_info": "no valid camera_info for the frame (none received, or all rejected)",
    "camera_info_mismatch": "the image size differs from camera_info's",
    "bad_image": "the image cannot be decoded (encoding, size, step or data)",
    "internal_error": "an unexpected error while processing the frame",
}

#: Detection-level reasons the node adds to the estimator's (``runtime.estimator.SKIP_REASONS``).
NODE_DETECTION_REASONS = {
    "bad_detection": "a Detection2D without hypothesis, with a non-finite value or a non-positive size",
    "too_many_detections": "beyond max_detections in one array (the lowest scores are skipped)",
    "non_finite_pose": "the pose was not finite",
}

INPUTS = ("image", "camera_info", "detections")

#: Waiting longer than this (seconds) counts as "no partner" in reports and warnings.
UNPAIRED_AGE_S = 1.0

#: Processing time over wall time above which the node is reported as unable to keep up.
BUSY_WARN = 0.9

OK, WARN, ERROR = 0, 1, 2

#: How often the nodes flush warnings held back by the throttle (seconds).
FLUSH_PERIOD_S = 0.25


class ThrottledWarnings:
    """At most one warning per kind per ``period`` seconds, and none lost.

    A warning of a kind already logged less than ``period`` ago is held back; :meth:`flush` (a node
    timer, every :data:`FLUSH_PERIOD_S`) logs the latest held-back text of each kind once its period
    has passed, with the count of occurrences since the last line. So a fault that happens only while
    its kind is throttled is still reported, within ``period`` + ``FLUSH_PERIOD_S`` seconds.
    """

    def __init__(self, logger, period: float, clock=time.monotonic):
        self._logger, self._period, self._clock = logger, period, clock
        self._last: Dict[str, float] = {}
        self._held: Dict[str, Tuple[int, str]] = {}  # kind -> (occurrences held back, latest text)
        self.counts: Counter = Counter()

    def warn(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if self._clock() - self._last.get(kind, -math.inf) < self._period:
            held, _ = self._held.get(kind, (0, ""))
            self._held[kind] = (held + 1, text)
            return
        self._emit(kind, text, self._held.pop(kind, (0, ""))[0])

    def flush(self) -> None:
        now = self._clock()
        for kind in [k for k in self._held if now - self._last.get(k, -math.inf) >= self._period]:
            held, text = self._held.pop(kind)
            self._emit(kind, text, held - 1)

    def _emit(self, kind: str, text: str, more: int) -> None:
        self._last[kind] = self._clock()
        self._logger.warning(f"[{kind}] {text}" + (f" ({more} more since the last warning)" if more else ""))


@dataclass
class Counters:
    """Everything the node counts. Totals since start, except ``latencies`` (the last frames)."""

    received: Counter = field(default_factory=Counter)  # input -> messages
    camera_info_rejected: int = 0
    frames_processed: int = 0
    frames_skipped: Counter = field(default_factory=Counter)  # FRAME_SKIP_REASONS
    frames_held: int = 0  # frames that waited for their camera_info
    detections_estimated: int = 0
    detections_skipped: Counter = field(default_factory=Counter)  # detection reasons
    busy_s: float = 0.0  # seconds spent processing frames
    latencies: deque = field(default_factory=lambda: deque(maxlen=300))  # seconds, ready -> published

    def snapshot(self) -> Dict[str, float]:
        """The totals that reports turn into rates and per-period deltas."""
        snap = {f"received.{k}": float(self.received[k]) for k in INPUTS}
        snap.update({"frames_processed": float(self.frames_processed), "busy_s": self.busy_s,
                     "frames_skipped": float(sum(self.frames_skipped.values())),
                     "camera_info_rejected": float(self.camera_info_rejected)})
        return snap


@dataclass
class Status:
    """One ``DiagnosticStatus`` before it becomes a message."""

    level: int
    name: str
    message: str
    values: List[Tuple[str, str]]


@dataclass
class Report:
    statuses: List[Status]
    warnings: List[Tuple[str, str]]  # (kind, text) for the node's throttled warnings


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def build_report(node_name: str, topics: Dict[str, str], counters: Counters, previous: Dict[str, float],
                 elapsed_s: float, pairer: FramePairer, now: float, has_camera: bool, frames_waiting_camera: int,
                 detection_reasons: Sequence[str], sync_tolerance_s: float, cache_max_bytes: int) -> Report:
    """The three statuses and the warnings for the period since ``previous`` (a ``Counters.snapshot``).

    Args:
        node_name: prefix of the status names.
        topics: resolved topic name per input (``INPUTS``).
        elapsed_s: seconds since ``previous`` was taken.
        pairer: the node's pairing caches (waiting messages, drops).
        now: monotonic time, to age the waiting messages.
        has_camera: whether a valid camera model was ever received.
        frames_waiting_camera: frames held for their camera_info right now.
        detection_reasons: every detection skip reason, listed in this order.
    """
    snap = counters.snapshot()
    dt = max(elapsed_s, 1e-9)
    delta = {k: snap[k] - previous.get(k, 0.0) for k in snap}
    rate = {k: delta[f"received.{k}"] / dt for k in INPUTS}
    warnings: List[Tuple[str, str]] = []

    # -- inputs ---------------------------------------------------------------------------------
    silent = [k for k in INPUTS if delta[f"received.{k}"] == 0]
    active = [k for k in INPUTS if k not in silent]
    level, message = OK, "receiving all inputs"
    if not active:
        level, message = WARN, "no input in the last period"
    elif silent:
        names = ", ".join(f"{topics[k]} ({k})" for k in silent)
        level, message = WARN, f"nothing received on {names} while {', '.join(topics[k] for k in active)} " \
                               f"{'is' if len(active) == 1 else 'are'} active"
        warnings.append(("input_silent", message))
    if delta["camera_info_rejected"]:
        level = max(level, WARN)
        message += f"; {int(delta['camera_info_rejected'])} camera_info rejected (see the invalid_camera_info warning)"
    inputs = Status(level, f"{node_name}: inputs", message, [
        *[(f"{k} topic", topics[k]) for k in INPUTS],
        *[(f"{k} rate (Hz)", _fmt(rate[k], 2)) for k in INPUTS],
        *[(f"{k} received", str(counters.received[k])) for k in INPUTS],
        ("camera_info rejected", str(counters.camera_info_rejected)),
    ])

    # -- pairing --------------------------------------------------------------------------------
    stale_images, stale_dets = pairer.stale(now, UNPAIRED_AGE_S)
    dropped_images = sum(pairer.images.dropped.values())
    dropped_dets = sum(pairer.detections.dropped.values())
    dropped_now = (dropped_images - previous.get("dropped.images", 0.0),
                   dropped_dets - previous.get("dropped.detections", 0.0))
    offset = pairer.unpaired_offset()
    paired_now = pairer.paired - previous.get("paired", 0.0)
    level, message = OK, f"{int(paired_now)} frames paired in the last period"
    problems = []
    images_unpaired = stale_images or dropped_now[0]
    dets_unpaired = stale_dets or dropped_now[1]
    if pairer.mode == "exact":
        how = "stamps must be equal (sync: exact; sync:=approximate pairs restamped detections)"
    else:
        how = f"stamps must be within sync_tolerance_s = {sync_tolerance_s:g} s (sync: approximate)"
    if images_unpaired and counters.received["detections"] == 0:
        problems.append(f"images on {topics['image']} wait for detection arrays, but none was ever received "
                        f"on {topics['detections']}")
    elif dets_unpaired and counters.received["image"] == 0:
        problems.append(f"detection arrays on {topics['detections']} wait for images, but none was ever "
                        f"received on {topics['image']}")
    elif images_unpaired or dets_unpaired:
        text = (f"images on {topics['image']} and detection arrays on {topics['detections']} do not pair"
                if images_unpaired and dets_unpaired else
                f"images on {topics['image']} find no detection array" if images_unpaired else
                f"detection arrays on {topics['detections']} find no image")
        if offset is not None:
            text += f": the nearest detection stamp is {format_offset_ns(offset)} from an unpaired image's"
        problems.append(f"{text}; {how}")
    if dropped_now[0] or dropped_now[1]:
        problems.append(f"{int(dropped_now[0])} images and {int(dropped_now[1])} detection arrays dropped "
                        f"unpaired in the last period ({dropped_images} and {dropped_dets} in all)")
    if problems:
        level = ERROR if paired_now == 0 and (stale_images or stale_dets or any(dropped_now)) else WARN
        message = "; ".join(problems)
        warnings.append(("unpaired", message))
    pairing = Status(level, f"{node_name}: pairing", message, [
        ("sync", pairer.mode),
        ("sync tolerance (s)", _fmt(sync_tolerance_s, 6) if pairer.mode == "approximate" else "0"),
        ("frames paired", str(pairer.paired)),
        ("pairing rate (Hz)", _fmt(paired_now / dt, 2)),
        ("images waiting", str(len(pairer.images.entries))),
        ("detections waiting", str(len(pairer.detections.entries))),
        ("cache bytes", str(pairer.nbytes)),
        ("cache limit bytes", str(cache_max_bytes)),
        ("nearest stamp offset (s)", f"{offset / 1e9:.9f}" if offset is not None else ""),
        ("dropped rate (Hz)", _fmt((dropped_now[0] + dropped_now[1]) / dt, 2)),
        ("images dropped", str(dropped_images)),
        *[(f"images dropped: {r}", str(pairer.images.dropped[r])) for r in DROP_REASONS],
        ("detections dropped", str(dropped_dets)),
        *[(f"detections dropped: {r}", str(pairer.detections.dropped[r])) for r in DROP_REASONS],
        ("frames waiting for camera_info", str(frames_waiting_camera)),
        ("frames held for camera_info", str(counters.frames_held)),
    ])

    # -- processing -------------------------------------------------------------------------------
    lat = np.asarray(counters.latencies, dtype=np.float64) * 1e3
    p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (np.nan, np.nan))
    busy = delta["busy_s"] / dt
    skipped_now = int(delta["frames_skipped"])
    processed_now = int(delta["frames_processed"])
    level, message = OK, f"{processed_now} frames published in the last period"
    problems = []
    if skipped_now:
        reasons = ", ".join(f"{k} {v}" for k, v in counters.frames_skipped.items() if v)
        problems.append(f"{skipped_now} frames skipped in the last period (in all: {reasons})")
    if not has_camera and (frames_waiting_camera or counters.frames_skipped["no_camera_info"]):
        problems.append(f"no valid camera_info received on {topics['camera_info']}")
        warnings.append(("no_camera_info", f"frames wait or are skipped: no valid camera_info received on "
                                           f"{topics['camera_info']}"))
    if busy > BUSY_WARN:
        problems.append(f"busy {100 * busy:.0f}% of the time: the node cannot keep up with its input "
                        f"(lower the input rate or the detections per frame, or check num_threads)")
        warnings.append(("busy", problems[-1]))
    if problems:
        level = ERROR if processed_now == 0 and skipped_now else WARN
        message = "; ".join(problems)
        if skipped_now:
            warnings.append(("frames_skipped", message))
    processing = Status(level, f"{node_name}: processing", message, [
        ("frames processed", str(counters.frames_processed)),
        ("output rate (Hz)", _fmt(processed_now / dt, 2)),
        ("skipped rate (Hz)", _fmt(skipped_now / dt, 2)),
        ("frames skipped", str(sum(counters.frames_skipped.values()))),
        *[(f"frames skipped: {r}", str(counters.frames_skipped[r])) for r in FRAME_SKIP_REASONS],
        ("detections estimated", str(counters.detections_estimated)),
        ("detections skipped", str(sum(counters.detections_skipped.values()))),
        *[(f"detections skipped: {r}", str(counters.detections_skipped[r])) for r in detection_reasons],
        ("latency p50 (ms)", _fmt(p50, 2) if len(lat) else ""),
        ("latency p99 (ms)", _fmt(p99, 2) if len(lat) else ""),
        ("latency window (frames)", str(len(lat))),
        ("busy fraction", _fmt(busy, 3)),
    ])
    return Report([inputs, pairing, processing], warnings)


def report_snapshot(counters: Counters, pairer: FramePairer) -> Dict[str, float]:
    """``Counters.snapshot`` plus the pairer's totals: what the next report's deltas start from."""
    snap = counters.snapshot()
    snap.update({"paired": float(pairer.paired), "dropped.images": float(sum(pairer.images.dropped.values())),
                 "dropped.detections": float(sum(pairer.detections.dropped.values()))})
    return snap


def to_message(report: Report, stamp, hardware_id: str):
    """-> ``diagnostic_msgs/DiagnosticArray``."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    msg = DiagnosticArray()
    msg.header.stamp = stamp
    for s in report.statuses:
        msg.status.append(DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message,
                                           hardware_id=hardware_id,
                                           values=[KeyValue(key=k, value=v) for k, v in s.values]))
    return msg
