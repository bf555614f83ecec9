"""Stand-in for the two ``ros2`` commands of docs/custom-objects.md, where the ROS 2 command line is not
installed (used by test_custom_objects_guide.py; run as a script):

- ``ros2 bag record -o OUT IMAGE_TOPIC .../camera_info``: writes the rosbag2 the real command would
  record from a camera (sqlite3, rosbag2 format 9, with the ``rosbags`` library): one CameraInfo, then
  ``FRAMES`` rgb8 images of ``W``x``H`` on those topics (noise with coloured blocks);
- ``ros2 launch PACKAGE FILE name:=value ...``: the same launch file and arguments through
  ``python -m pose6d_ros.ros.launch_graph``, real nodes on a real graph; it waits until every node the
  file starts has logged its ``ready`` line, then stops the graph with SIGINT as Ctrl-C would, prints the
  graph's output and exits with its exit code (1 if a node never became ready).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

FRAMES, H, W = 4, 96, 128
READY = ("pose estimator ready", "detector ready")
TIMEOUT_S = 180.0


def record(out: Path, image_topic: str, info_topic: str) -> int:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    T = ts.types

    def header(ns: int):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="camera_color_optical_frame")

    info = T["sensor_msgs/msg/CameraInfo"](
        header=header(10), height=H, width=W, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([110.0, 0, 63.5, 0, 110.0, 47.5, 0, 0, 1]), r=np.eye(3).reshape(-1), p=np.zeros(12),
        binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    rng = np.random.default_rng(0)
    with Writer(out, version=9) as w:
        ci = w.add_connection(info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts)
        im = w.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=ts)
        w.write(ci, 10, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
        for i in range(FRAMES):
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            rgb[20 + 5 * i:60 + 5 * i, 30:80] = (200, 60, 30)
            rgb[50:80, 70 + 5 * i:110] = (40, 90, 200)
            ns = 10**9 + i * 33_000_000
            msg = T["sensor_msgs/msg/Image"](header=header(ns), height=H, width=W, encoding="rgb8", is_bigendian=0,
                                             step=3 * W, data=rgb.reshape(-1))
            w.write(im, ns, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    print(f"recorded {FRAMES} frames of {image_topic} and {info_topic} to {out}")
    return 0


def launch(arguments: list) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "pose6d_ros.ros.launch_graph", *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    expected = [r for r in READY if r != "detector ready" or "use_detector:=false" not in arguments]
    deadline = time.monotonic() + TIMEOUT_S
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        text = "".join(lines)
        if all(r in text for r in expected):
            ready = True
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: launch_graph forwards it to the nodes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    sys.stdout.write("".join(lines))
    if not ready:
        print(f"ros2 launch stand-in: not every node logged ready ({expected}) within {TIMEOUT_S:.0f} s",
              file=sys.stderr)
        return proc.returncode or 1
    return proc.returncode


def main(argv: list) -> int:
    if argv[:2] == ["bag", "record"]:
        rest = argv[2:]
        if "-o" not in rest or len(rest) != 4:
            print(f"ros2 stand-in: expected 'bag record -o OUT IMAGE_TOPIC INFO_TOPIC', got {argv}", file=sys.stderr)
            return 2
        i = rest.index("-o")
        out = Path(rest[i + 1])
        topics = rest[:i] + rest[i + 2:]
        info = [t for t in topics if t.endswith("camera_info")]
        if len(info) != 1:
            print(f"ros2 stand-in: expected one */camera_info topic, got {topics}", file=sys.stderr)
            return 2
        return record(out, next(t for t in topics if t != info[0]), info[0])
    if argv[:1] == ["launch"]:
        return launch(argv[1:])
    print(f"ros2 stand-in: only 'bag record' and 'launch' are stood in for, got {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
