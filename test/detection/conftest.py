"""Shared fixtures of the detector tests: the lm-lite registry and a tiny trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "config" / "objects_lm_lite.yaml"
#: Small frames keep a training step near a second on a CPU.
TINY = ["--image-size", "96", "128", "--batch", "2", "--box-head-dim", "64", "--threads", "2"]


@pytest.fixture(scope="session")
def objects_yaml() -> Path:
    return OBJECTS


@pytest.fixture(scope="session")
def tiny_args() -> list:
    return list(TINY)


@pytest.fixture(scope="session")
def registry():
    from pose6d_ros.registry import ObjectRegistry

    return ObjectRegistry.from_yaml(OBJECTS)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A detector trained for 2 steps by the real ``train_detector`` entry point."""
    from pose6d_ros.detection.train import main

    out = tmp_path_factory.mktemp("det") / "tiny.pt"
    assert main(["--objects", str(OBJECTS), "--out", str(out), "--steps", "2", *TINY]) == 0
    return out
