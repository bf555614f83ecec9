"""Bag import: write small bags with rosbags (sqlite3 and MCAP), import, compare pixels and K."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag2 import Writer  # noqa: E402
from rosbags.rosbag2.enums import StoragePlugin  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from pose6d_ros.data import bop  # noqa: E402
from pose6d_ros.data.bag import BagImportError, import_bag, main  # noqa: E402

TS = get_typestore(Stores.LATEST)
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
RoI = TS.types["sensor_msgs/msg/RegionOfInterest"]

H, W = 12, 16


def _header(ns: int) -> object:
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam")


def _K(f: float) -> np.ndarray:
    return np.array([[f, 0.0, 7.5], [0.0, f + 1, 5.5], [0.0, 0.0, 1.0]])


def _camera_info(ns: int, f: float, d=(0.0,) * 5, model: str = "plumb_bob") -> object:
    return CameraInfo(
        header=_header(ns), height=H, width=W, distortion_model=model,
        d=np.array(d, dtype=np.float64), k=_K(f).reshape(-1), r=np.eye(3).reshape(-1),
        p=np.zeros(12), binning_x=0, binning_y=0,
        roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _rgb(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _image_msg(ns: int, rgb: np.ndarray, encoding: str, pad: int = 0) -> object:
    """Encode ``rgb`` as ``encoding`` by hand (the reference), with ``pad`` bytes at each row end."""
    conv = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, np.full((H, W, 1), 7, np.uint8)], 2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], np.full((H, W, 1), 7, np.uint8)], 2),
        "mono8": rgb[:, :, :1],
    }[encoding]
    rows = conv.reshape(H, -1)
    rows = np.concatenate([rows, np.zeros((H, pad), np.uint8)], 1)
    return Image(header=_header(ns), height=H, width=W, encoding=encoding, is_bigendian=0,
                 step=rows.shape[1], data=rows.reshape(-1))


def _write_bag(path: Path, plugin: StoragePlugin, image_msgs, info_msgs, image_type: str) -> None:
    with Writer(path, version=9, storage_plugin=plugin) as w:
        ci = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        im = w.add_connection("/cam/image", image_type, typestore=TS)
        events = [(ns, ci, m, "sensor_msgs/msg/CameraInfo") for ns, m in info_msgs]
        events += [(ns, im, m, image_type) for ns, m in image_msgs]
        for ns, conn, m, typ in sorted(events, key=lambda e: e[0]):
            w.write(conn, ns, TS.serialize_cdr(m, typ))


PLUGINS = [pytest.param(StoragePlugin.SQLITE3, id="sqlite3"), pytest.param(StoragePlugin.MCAP, id="mcap")]


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_import_raw_images(tmp_path, plugin, encoding):
    t0 = 1_700_000_000 * 10**9
    # camera_info at 0, 100, 200 ms with distinct focal lengths; images at 10, 90, 160, 260 ms
    infos = [(t0 + k * 100_000_000, _camera_info(t0 + k * 100_000_000, 500.0 + k)) for k in range(3)]
    img_times = [t0 + ms * 1_000_000 for ms in (10, 90, 160, 260)]
    rgbs = [_rgb(i) for i in range(4)]
    msgs = [(ns, _image_msg(ns, rgb, encoding, pad=3)) for ns, rgb in zip(img_times, rgbs)]
    bag = tmp_path / "bag"
    _write_bag(bag, plugin, msgs, infos, "sensor_msgs/msg/Image")

    out = tmp_path / "out"
    summary = import_bag(bag, "/cam/image", "/cam/camera_info", out)
    assert summary.num_images == 4 and summary.image_size == (H, W)

    scene = bop.load_scene(out, 0)
    assert scene.gts is None and scene.image_ids == [0, 1, 2, 3]
    expected_f = [500.0, 501.0, 502.0, 502.0]  # nearest in time: 0, 100, 200, 200 ms
    for i in range(4):
        np.testing.assert_array_equal(scene.cameras[i].K, _K(expected_f[i]))
        got = bop.load_rgb(out, 0, i)
        want = np.repeat(rgbs[i][:, :, :1], 3, 2) if encoding == "mono8" else rgbs[i]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_import_compressed_every(tmp_path, plugin):
    t0 = 10**9
    rgbs = [_rgb(i) for i in range(5)]
    msgs = []
    for i, rgb in enumerate(rgbs):
        ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])  # cv2 writes BGR: the PNG holds true RGB
        assert ok
        msgs.append((t0 + i * 10**7, CompressedImage(header=_header(t0 + i * 10**7), format="png",
                                                     data=buf.reshape(-1))))
    bag = tmp_path / "bag"
    _write_bag(bag, plugin, msgs, [(t0, _camera_info(t0, 600.0))], "sensor_msgs/msg/CompressedImage")
    out = tmp_path / "out"
    assert main(["--bag", str(bag), "--image-topic", "/cam/image", "--camera-info-topic",
                 "/cam/camera_info", "--out", str(out), "--every", "2"]) == 0
    scene = bop.load_scene(out, 0)
    assert scene.image_ids == [0, 1, 2]
    for im_id, src in zip(scene.image_ids, (0, 2, 4)):
        np.testing.assert_array_equal(bop.load_rgb(out, 0, im_id), rgbs[src])
        np.testing.assert_array_equal(scene.cameras[im_id].K, _K(600.0))


def test_missing_topic_lists_topics(tmp_path, capsys):
    bag = tmp_path / "bag"
    _write_bag(bag, StoragePlugin.SQLITE3, [(1, _image_msg(1, _rgb(0), "rgb8"))],
               [(1, _camera_info(1, 500.0))], "sensor_msgs/msg/Image")
    with pytest.raises(BagImportError, match=r"no topic '/nope'.*/cam/camera_info.*/cam/image"):
        import_bag(bag, "/nope", "/cam/camera_info", tmp_path / "out")
    assert main(["--bag", str(bag), "--image-topic", "/cam/image", "--camera-info-topic", "/x",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "no topic '/x'" in capsys.readouterr().err
    with pytest.raises(BagImportError, match="has type sensor_msgs/msg/CameraInfo, expected one of sensor_msgs/msg/Image"):
        import_bag(bag, "/cam/camera_info", "/cam/image", tmp_path / "out")


def test_unsupported_encoding(tmp_path):
    bag = tmp_path / "bag"
    m = Image(header=_header(5), height=H, width=W, encoding="16UC1", is_bigendian=0, step=2 * W,
              data=np.zeros(2 * W * H, np.uint8))
    _write_bag(bag, StoragePlugin.SQLITE3, [(5, m)], [(1, _camera_info(1, 500.0))], "sensor_msgs/msg/Image")
    with pytest.raises(BagImportError, match=r"encoding: unsupported '16UC1'.*rgb8"):
        import_bag(bag, "/cam/image", "/cam/camera_info", tmp_path / "out")


def test_existing_scene_needs_overwrite(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, StoragePlugin.SQLITE3, [(5, _image_msg(5, _rgb(0), "rgb8"))], [(1, _camera_info(1, 500.0))],
               "sensor_msgs/msg/Image")
    import_bag(bag, "/cam/image", "/cam/camera_info", tmp_path / "out")
    with pytest.raises(BagImportError, match="exists already"):
        import_bag(bag, "/cam/image", "/cam/camera_info", tmp_path / "out")
    import_bag(bag, "/cam/image", "/cam/camera_info", tmp_path / "out", overwrite=True)


def test_distortion_is_kept(tmp_path):
    bag = tmp_path / "bag"
    d = (-0.1, 0.02, 0.001, -0.002, 0.0005)
    _write_bag(bag, StoragePlugin.SQLITE3, [(5, _image_msg(5, _rgb(0), "rgb8"))], [(1, _camera_info(1, 500.0, d))],
               "sensor_msgs/msg/Image")
    import_bag(bag, "/cam/image", "/cam/camera_info", tmp_path / "out")
    cam = bop.load_scene(tmp_path / "out", 0).cameras[0]
    assert cam.D.tolist() == list(d)
    bag2 = tmp_path / "bag2"
    _write_bag(bag2, StoragePlugin.SQLITE3, [(5, _image_msg(5, _rgb(0), "rgb8"))],
               [(1, _camera_info(1, 500.0, (0.1, 0.0, 0.0, 0.0), "equidistant"))], "sensor_msgs/msg/Image")
    with pytest.raises(BagImportError, match="distortion model 'equidistant'"):
        import_bag(bag2, "/cam/image", "/cam/camera_info", tmp_path / "out2")
