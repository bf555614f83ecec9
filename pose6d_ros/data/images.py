"""Image buffers of `sensor_msgs/Image` and `CompressedImage` -> RGB arrays, shared by the ROS node
and bag import.

The core knows the layout of the five 8-bit raw encodings, and decodes jpeg and png with OpenCV; it
never needs a message class.
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


# image_transport's `compressed` plugin writes `format` as "<encoding>; <jpeg|png> compressed <encoding>",
# older publishers as just "jpeg" or "png"; OpenCV reads the codec from the bytes themselves.
_COMPRESSED_CODECS = ("jpeg", "jpg", "png")


def compressed_to_rgb(data: Any, fmt: str) -> np.ndarray:
    """A `CompressedImage` buffer (jpeg or png, 8-bit) -> ``(H, W, 3)`` uint8 RGB.

    Grey images come back with the grey value in all three channels, and an alpha channel is dropped,
    as for the raw encodings.

    Raises:
        ImageDecodeError: naming ``format`` (not jpeg or png, e.g. ``compressedDepth``) or ``data``
        (not decodable, or not 8-bit).
    """
    import cv2

    codec = str(fmt).lower()
    if codec and ("compresseddepth" in codec or not any(c in codec for c in _COMPRESSED_CODECS)):
        raise ImageDecodeError(f"format: unsupported '{fmt}' (jpeg or png images are supported)")
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data, dtype=np.uint8).reshape(-1)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ImageDecodeError(f"data: {buf.size} bytes could not be decoded as '{fmt or 'jpeg/png'}'")
    if img.dtype != np.uint8:
        raise ImageDecodeError(f"data: {img.dtype} pixels are not supported (8-bit jpeg or png)")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    return np.ascontiguousarray(img[:, :, [2, 1, 0]])  # OpenCV decodes to BGR(A)
