"""Raw `sensor_msgs/Image` pixel buffers -> RGB arrays, shared by the ROS node and bag import.

The core knows the layout of the five 8-bit encodings; it never needs a message class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Channels and source order per supported encoding; the output is always (H, W, 3) uint8 RGB.
_ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageDecodeError(ValueError):
    """A raw image buffer that cannot be read; the text starts with the offending field."""


def raw_to_rgb(data: Any, height: int, width: int, step: int, encoding: str) -> np.ndarray:
    """Pixel buffer of an 8-bit image (any row ``step``, padding allowed) -> ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageDecodeError: naming ``encoding``, ``height/width``, ``step`` or ``data``.
    """
    enc = str(encoding).lower()
    if enc not in _ENCODINGS:
        raise ImageDecodeError(f"encoding: unsupported '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    channels, order = _ENCODINGS[enc]
    h, w, step = int(height), int(width), int(step)
    if h <= 0 or w <= 0:
        raise ImageDecodeError(f"height/width: must be positive, got {h}x{w}")
    if step < w * channels:
        raise ImageDecodeError(f"step: {step} is smaller than width*channels = {w * channels}")
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data, dtype=np.uint8).reshape(-1)
    if buf.size < h * step:
        raise ImageDecodeError(f"data: {buf.size} bytes, expected height*step = {h * step}")
    rows = buf[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    return np.ascontiguousarray(rows[:, :, list(order)])
