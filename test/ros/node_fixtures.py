"""Frames, a registry and a model for the estimator-node tests (made on the fly, nothing downloaded).

Frames come from the simulated real domain (pyrender, an independent renderer); detections are the
GT visible boxes. The model is `test/fixtures/` 's trained one when present, else a random one,
which still checks the ROS plumbing (the node must equal a direct `Estimator` call).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import List

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGISTRY_YAML = ROOT / "config" / "objects_lm_lite.yaml"
TRAINED_MODEL = ROOT / "test" / "fixtures" / "lm_lite_demo.onnx"


@dataclass
class Frame:
    rgb: np.ndarray
    K: np.ndarray
    obj_ids: List[int]
    poses: np.ndarray  # (N, 4, 4)
    boxes: List[tuple]  # GT visible boxes, (x0, y0, x1, y1) continuous edges


def make_frames(registry, obj_ids, n_per_object: int, seed: int = 7, width: int = 320, height: int = 240):
    from pose6d_ros.data.simreal import RealDomainConfig, RealRenderer, sample_frames

    K = np.array([[286.0, 0.0, 161.0], [0.0, 287.0, 121.0], [0.0, 0.0, 1.0]])
    cfg = RealDomainConfig(width=width, height=height, K=K, object_px=(60.0, 90.0), clutter=(0, 1),
                           occlusion_prob=0.0)
    renderer = RealRenderer(registry, cfg, seed=seed)
    frames = []
    try:
        for oid in obj_ids:
            for spec in sample_frames(registry, oid, range(n_per_object), cfg, seed):
                out = renderer.render(spec)
                boxes = []
                for m in out.masks_visib:
                    ys, xs = np.nonzero(m)
                    boxes.append((xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5) if len(xs) else None)
                keep = [k for k, b in enumerate(boxes) if b is not None]
                frames.append(Frame(out.rgb, K, [spec.obj_ids[k] for k in keep], spec.poses[keep],
                                    [boxes[k] for k in keep]))
    finally:
        renderer.close()
    return frames


def make_model(registry, obj_ids, path: pathlib.Path) -> pathlib.Path:
    if TRAINED_MODEL.is_file():
        return TRAINED_MODEL
    import torch

    from pose6d_ros.models import ModelCard, PoseNet
    from pose6d_ros.runtime.onnx_export import export_onnx

    torch.manual_seed(0)
    net = PoseNet(backbone="resnet18", num_objects=len(obj_ids), crop_size=64).eval()
    card = ModelCard.for_model(net, registry, obj_ids)
    return export_onnx(net, card, path, exporter="torchscript")  # the fast exporter: this model is a stand-in


def node_command(*ros_args: str) -> List[str]:
    exe = shutil.which("estimator_node")
    cmd = [exe] if exe else [sys.executable, "-m", "pose6d_ros.ros.estimator_node"]
    return cmd + ["--ros-args", "--params-file", str(ROOT / "config" / "estimator.yaml"), *ros_args]


class NodeProcess:
    """The estimator node as a real process (the installed console script)."""

    def __init__(self, *ros_args: str, log_path: pathlib.Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(node_command(*ros_args), stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
