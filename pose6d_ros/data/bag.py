"""Import a ROS 2 bag's camera stream as an unlabeled BOP-style image set.

Reads sqlite3 or MCAP bags with the ``rosbags`` library (its typestore, no rclpy), and writes::

    OUT/SCENE_ID/rgb/IM_ID.png       one per kept image
    OUT/SCENE_ID/scene_camera.json   each image's K (and distortion as ``cam_D`` when non-zero),
                                     from the camera_info nearest in time
    OUT/SCENE_ID/image_stamps.json   {im_id: stamp in ns} (not part of BOP; for tracing back)

Console script: ``import_bag --bag PATH --image-topic T --camera-info-topic C --out DIR [--every N]``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from pose6d_ros.data import bop
from pose6d_ros.data.images import SUPPORTED_ENCODINGS, ImageDecodeError, compressed_to_rgb, raw_to_rgb

__all__ = ["BagImportError", "ImportSummary", "SUPPORTED_ENCODINGS", "decode_image", "import_bag", "main"]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class BagImportError(RuntimeError):
    """The bag cannot be imported as asked (missing topic, wrong type, unsupported encoding)."""


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_bag` wrote."""

    scene_dir: Path
    num_images: int
    num_camera_infos: int
    image_size: Tuple[int, int]  # (H, W) of the first image


def _stamp_ns(msg: Any, fallback: int) -> int:
    stamp = msg.header.stamp
    ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return ns if ns > 0 else int(fallback)


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """A deserialised ``sensor_msgs/Image`` or ``CompressedImage`` -> ``(H, W, 3)`` uint8 RGB.

    Raises:
        BagImportError: unsupported encoding or inconsistent size.
    """
    if msgtype == COMPRESSED_TYPE:
        try:
            return compressed_to_rgb(msg.data, msg.format)
        except ImageDecodeError as e:
            raise BagImportError(f"CompressedImage.{e}") from e
    try:
        return raw_to_rgb(msg.data, msg.height, msg.width, msg.step, msg.encoding)
    except ImageDecodeError as e:
        raise BagImportError(f"image {msg.width}x{msg.height} '{msg.encoding}': {e}") from e


def _distortion(msg: Any, bag: Path) -> Optional[np.ndarray]:
    """CameraInfo ``d`` as OpenCV coefficients, ``None`` when the image is undistorted."""
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if d.size == 0 or not np.any(d):
        return None
    model = str(msg.distortion_model)
    if model not in ("plumb_bob", "rational_polynomial") or d.size not in (4, 5, 8):
        raise BagImportError(
            f"{bag}: distortion model '{model}' with {d.size} coefficients is not supported "
            "(plumb_bob or rational_polynomial with 4, 5 or 8 coefficients)"
        )
    return d


def _find_connection(reader: Any, topic: str, allowed: Sequence[str], bag: Path) -> Any:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        have = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)) or "none"
        raise BagImportError(f"{bag}: no topic '{topic}'; the bag has: {have}")
    good = [c for c in conns if c.msgtype in allowed]
    if not good:
        raise BagImportError(f"{bag}: topic '{topic}' has type {conns[0].msgtype}, expected one of {', '.join(allowed)}")
    return good


def import_bag(
    bag: Path | str,
    image_topic: str,
    camera_info_topic: str,
    out: Path | str,
    *,
    every: int = 1,
    scene_id: int = 0,
    ext: str = ".png",
    overwrite: bool = False,
) -> ImportSummary:
    """Write every ``every``-th image of ``image_topic`` and its camera as a BOP scene of ``out``.

    Each image gets the K of the ``camera_info_topic`` message nearest in time (header stamps,
    falling back to the bag's receive time when a stamp is zero).

    Args:
        bag: rosbag2 folder (sqlite3 or MCAP storage).
        image_topic: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) or ``CompressedImage``.
        camera_info_topic: ``sensor_msgs/CameraInfo``.
        out: split folder to write into.
        every: keep one image out of ``every``.
        scene_id: scene folder to create.
        ext: ``".png"`` or ``".jpg"``.
        overwrite: allow writing into an existing scene folder.

    Raises:
        BagImportError: missing topic (the message lists the bag's topics), wrong message type,
            unsupported encoding, no camera_info, or an existing scene without ``overwrite``.
    """
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    bag = Path(bag)
    if not bag.exists():
        raise BagImportError(f"{bag}: no such bag")
    sdir = bop.scene_dir(out, scene_id)
    if (sdir / bop.SCENE_CAMERA).exists() and not overwrite:
        raise BagImportError(f"{sdir}: scene exists already (pass overwrite=True / --overwrite)")
    typestore = get_typestore(Stores.LATEST)

    with Reader(bag) as reader:
        img_conns = _find_connection(reader, image_topic, (IMAGE_TYPE, COMPRESSED_TYPE), bag)
        info_conns = _find_connection(reader, camera_info_topic, (CAMERA_INFO_TYPE,), bag)

        info_stamps: List[int] = []
        info_K: List[np.ndarray] = []
        info_D: List[Optional[np.ndarray]] = []
        for conn, t, raw in reader.messages(connections=info_conns):
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
            if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
                continue  # an uncalibrated camera publishes K = 0; such a message cannot serve
            info_stamps.append(_stamp_ns(msg, t))
            info_K.append(K)
            info_D.append(_distortion(msg, bag))
        if not info_K:
            raise BagImportError(f"{bag}: topic '{camera_info_topic}' has no message with a valid K")
        order = np.argsort(info_stamps, kind="stable")
        info_stamps = [info_stamps[i] for i in order]
        info_K = [info_K[i] for i in order]
        info_D = [info_D[i] for i in order]

        cameras = {}
        stamps = {}
        size: Optional[Tuple[int, int]] = None
        n_seen = 0
        for conn, t, raw in reader.messages(connections=img_conns):
            keep = n_seen % every == 0
            n_seen += 1
            if not keep:
                continue
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            img = decode_image(msg, conn.msgtype)
            stamp = _stamp_ns(msg, t)
            j = bisect.bisect_left(info_stamps, stamp)
            cands = [i for i in (j - 1, j) if 0 <= i < len(info_stamps)]
            best = min(cands, key=lambda i: abs(info_stamps[i] - stamp))
            im_id = len(cameras)
            bop.save_rgb(out, scene_id, im_id, img, ext=ext)
            cameras[im_id] = bop.CameraRecord(K=info_K[best], D=info_D[best])
            stamps[str(im_id)] = stamp
            size = size or (img.shape[0], img.shape[1])

    if not cameras:
        raise BagImportError(f"{bag}: topic '{image_topic}' has no messages")
    bop._atomic_write_bytes(sdir / "image_stamps.json", (json.dumps(stamps, indent=1) + "\n").encode())
    bop.save_scene(out, bop.SceneRecord(scene_id=scene_id, cameras=cameras))
    assert size is not None
    return ImportSummary(scene_dir=sdir, num_images=len(cameras), num_camera_infos=len(info_K), image_size=size)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_bag", description="Import a ROS 2 bag's images as an unlabeled BOP-style split."
    )
    p.add_argument("--bag", required=True, type=Path, help="rosbag2 folder (sqlite3 or MCAP)")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--camera-info-topic", required=True, help="sensor_msgs/CameraInfo topic")
    p.add_argument("--out", required=True, type=Path, help="split folder to write")
    p.add_argument("--every", type=int, default=1, help="keep one image out of N (default 1)")
    p.add_argument("--scene-id", type=int, default=0, help="scene folder id (default 0)")
    p.add_argument("--ext", choices=(".png", ".jpg"), default=".png", help="image format (default .png)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing scene")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``import_bag`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        s = import_bag(
            args.bag,
            args.image_topic,
            args.camera_info_topic,
            args.out,
            every=args.every,
            scene_id=args.scene_id,
            ext=args.ext,
            overwrite=args.overwrite,
        )
    except (BagImportError, ValueError) as exc:
        print(f"import_bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {s.num_images} images ({s.image_size[1]}x{s.image_size[0]}) to {s.scene_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
