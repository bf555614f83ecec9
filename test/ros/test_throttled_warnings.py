"""The nodes' throttled warnings: one line per kind per period, and no fault left unreported."""

from __future__ import annotations

from pose6d_ros.ros.diagnostics import ThrottledWarnings


class Lines:
    """A logger that keeps what it is given (the nodes pass rclpy's logger, which has the same method)."""

    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_one_line_per_kind_per_period_and_held_back_faults_are_flushed():
    log, clock = Lines(), Clock()
    w = ThrottledWarnings(log, period=5.0, clock=clock)
    w.warn("bad_image", "Image.step: 7 is smaller than width*channels")
    w.warn("bad_detection", "detections[0].results: empty")  # another kind is not throttled
    assert log.lines == ["[bad_image] Image.step: 7 is smaller than width*channels",
                         "[bad_detection] detections[0].results: empty"]
    clock.now += 1.0
    w.warn("bad_image", "Image.encoding: unsupported '16UC1'")  # a different fault of a throttled kind
    w.warn("bad_image", "Image.height/width: must be positive")
    w.flush()
    assert len(log.lines) == 2  # still inside the period
    clock.now += 4.0  # 5 s after the first line
    w.flush()
    assert log.lines[2] == "[bad_image] Image.height/width: must be positive (1 more since the last warning)"
    w.flush()
    assert len(log.lines) == 3  # nothing left to flush
    assert w.counts == {"bad_image": 3, "bad_detection": 1}


def test_a_repeat_after_the_period_is_logged_at_once_with_the_held_back_count():
    log, clock = Lines(), Clock()
    w = ThrottledWarnings(log, period=2.0, clock=clock)
    w.warn("unknown_class", "a")
    clock.now += 0.5
    w.warn("unknown_class", "b")
    clock.now += 2.0
    w.warn("unknown_class", "c")  # period over: logged now, carrying the one held back
    assert log.lines == ["[unknown_class] a", "[unknown_class] c (1 more since the last warning)"]
    w.flush()
    assert len(log.lines) == 2
