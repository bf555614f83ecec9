"""Shared fixtures: devices and dtypes (kornia style)."""

from __future__ import annotations

import pytest
import torch

from pose6d_ros.rendering._gl import preload_compiler

preload_compiler()  # tests import pyrender directly too: torch's compiler stack first (rendering/_gl.py)

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
