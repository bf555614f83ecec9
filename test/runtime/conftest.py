"""Fixtures of the runtime tests: a 4-object registry, a 3-object model card, a distorted camera."""

from __future__ import annotations

import pytest

import _runtime_scene as scene


@pytest.fixture
def registry():
    return scene.make_registry()


@pytest.fixture
def card(registry):
    return scene.make_card(registry)


@pytest.fixture
def camera():
    return scene.make_camera()
