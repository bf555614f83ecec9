"""What the node benchmarks share: the node as a process, an untrained model, frames and their messages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_YAML = ROOT / "config" / "objects_lm_lite.yaml"
K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])  # LINEMOD's camera
WIDTH, HEIGHT = 640, 480
BUSY_LOOP = "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a = a @ a; a /= np.abs(a).max()\n"


def untrained_model(folder: Path) -> Path:
    """An ONNX Φ of the default architecture over every registry object (random weights)."""
    import torch

    from pose6d_ros.models import DEFAULT_CONFIG, ModelCard, PoseNet
    from pose6d_ros.registry import ObjectRegistry
    from pose6d_ros.runtime.onnx_export import export_onnx

    registry = ObjectRegistry.from_yaml(REGISTRY_YAML)
    torch.manual_seed(0)
    net = PoseNet(**{**DEFAULT_CONFIG, "num_objects": len(registry)}).eval()
    return export_onnx(net, ModelCard.for_model(net, registry), folder / "untrained.onnx", exporter="torchscript")


def node_command(model: Path, extra: List[str]) -> List[str]:
    exe = Path(sys.executable).parent / "estimator_node"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pose6d_ros.ros.estimator_node"]
    params = [f"model:={model}", f"objects:={REGISTRY_YAML}", *extra]
    return cmd + ["--ros-args", "--params-file", str(ROOT / "config" / "estimator.yaml")] + \
        [a for p in params for a in ("-p", p)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_objects(model: Path) -> List[str]:
    """The names of the objects an exported model was trained on (its model card)."""
    from pose6d_ros.runtime.onnx_card import read_onnx_card

    return list(read_onnx_card(model).object_names)


def scene(names: List[str], n_det: int, rng: np.random.Generator):
    """One textured 640x480 frame and ``n_det`` boxes of the objects ``names`` in turn, all inside the image."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([(x * 0.4) % 256, (y * 0.5) % 256, ((x + y) * 0.3) % 256], axis=2).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    boxes = []
    for i in range(n_det):
        w, h = rng.uniform(70, 130, 2)
        x0, y0 = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
        boxes.append((names[i % len(names)], (x0, y0, x0 + w, y0 + h)))
    return rgb, boxes




def camera_info_msg(header, k: np.ndarray = K, width: int = WIDTH, height: int = HEIGHT, d=(0.0,) * 5,
                    distortion_model: str = "plumb_bob"):
    from sensor_msgs.msg import CameraInfo

    cam = CameraInfo(header=header, width=width, height=height, distortion_model=distortion_model)
    cam.k, cam.d = [float(v) for v in np.asarray(k).reshape(-1)], [float(v) for v in d]
    return cam


def header_at(k: int, period_ns: int, frame_id: str = "camera_optical"):
    """The header of frame ``k`` of a stream of period ``period_ns``, stamps from t = 1000 s."""
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(1000 * 1_000_000_000 + k * period_ns, 1_000_000_000)
    return header


def wait_until_subscribed(publishers, node_proc, log_path: Path, label: str, timeout: float = 120.0) -> None:
    """Block until the node process subscribes to every publisher; exit with its log if it dies first."""
    import time

    deadline = time.monotonic() + timeout
    while any(pub.get_subscription_count() == 0 for pub in publishers):
        if node_proc.poll() is not None:
            print(log_path.read_text())
            raise SystemExit(f"{label}: the node exited with {node_proc.returncode} before subscribing")
        if time.monotonic() > deadline:
            raise SystemExit(f"{label}: the node did not subscribe within {timeout:g} s")
        time.sleep(0.2)


def stop(node_proc, executor, client_node) -> None:
    """SIGINT the node process (kill after 15 s), then shut down this process's client node and rclpy."""
    import rclpy

    from pose6d_ros.ros.replay import stop_process

    stop_process(node_proc)
    executor.shutdown()
    client_node.destroy_node()
    rclpy.shutdown()


def start_node(model: Path, params: List[str], log_path: Path):
    """The estimator node as its own process, its output in ``log_path``; it sets its own thread counts
    (``num_threads``), so this process's ``OMP_NUM_THREADS`` is not passed on."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.Popen(node_command(model, params), stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env=env)
