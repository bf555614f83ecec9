"""Synthetic detection scenes: boxes agree with the rendered masks (NumPy), with OpenCV projections and
with pyrender's (OpenGL) instance labels of the same objects, poses and camera."""

from __future__ import annotations

# Imported first: it selects OSMesa before anything imports OpenGL.
from pose6d_ros.rendering.pyrender_ref import PyrenderReference  # noqa: I001
import cv2
import numpy as np
import pytest
import torch

from pose6d_ros.detection.scenes import DetectionScenes, SceneConfig, mask_boxes, scaled_intrinsics

SIZE = (96, 128)


def _np_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5])


def test_mask_boxes_hand_values():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    m[0, 4, 0] = True
    boxes = mask_boxes(m)
    assert boxes[0].tolist() == [-0.5, 0.5, 4.5, 4.5]
    assert torch.isnan(boxes[1]).all()


def test_scaled_intrinsics_maps_pixel_edges():
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    Ks = scaled_intrinsics(K, 0.5)
    # the image edges -0.5 and W-0.5 map to -0.5 and W/2-0.5; the centre stays the centre
    assert Ks[0, 2] == pytest.approx(159.5) and Ks[1, 2] == pytest.approx(119.5) and Ks[0, 0] == 250.0


@pytest.fixture(scope="module")
def scene_batch(registry):
    cfg = SceneConfig(image_size=SIZE, objects_per_frame=(2, 4), object_px=(25.0, 45.0), augment=False,
                      min_visible_px=10)
    scenes = DetectionScenes(registry, cfg, seed=3)
    return scenes, scenes.batch(range(6))


def test_boxes_match_rendered_masks(scene_batch):
    scenes, b = scene_batch
    B, M = b.obj_index.shape
    assert b.images.shape == (B, 3, *SIZE) and 0 <= float(b.images.min()) and float(b.images.max()) <= 1
    labels = b.labels.numpy()
    checked = 0
    for i in range(B):
        for k in range(M):
            ref = _np_box(labels[i] == k + 1)
            if ref is None:
                assert torch.isnan(b.boxes_visib[i, k]).all() and not bool(b.valid[i, k])
                continue
            np.testing.assert_array_equal(b.boxes_visib[i, k].numpy(), ref)
            assert int(b.px_visible[i, k]) == int((labels[i] == k + 1).sum())
            # the visible part lies inside the whole silhouette's box
            assert (b.boxes_obj[i, k, :2] <= b.boxes_visib[i, k, :2]).all()
            assert (b.boxes_obj[i, k, 2:] >= b.boxes_visib[i, k, 2:]).all()
            checked += 1
    assert checked >= B * 2
    # targets hold exactly the valid slots, labels are registry index + 1
    for i, tgt in enumerate(b.targets(offset=0.5)):
        v = b.valid[i]
        assert torch.equal(tgt["labels"], b.obj_index[i][v] + 1)
        assert torch.equal(tgt["boxes"], b.boxes_visib[i][v] + 0.5)
        assert (tgt["labels"] >= 1).all() and (tgt["labels"] <= len(scenes.registry)).all()


def test_whole_silhouette_box_matches_opencv_projection(scene_batch, registry):
    """The amodal box of each object ~ the box of its mesh vertices projected by OpenCV."""
    scenes, b = scene_batch
    H, W = SIZE
    K = scenes.K
    n = 0
    for i in range(b.obj_index.shape[0]):
        for k in range(b.obj_index.shape[1]):
            oi = int(b.obj_index[i, k])
            if oi < 0:
                continue
            info = list(registry)[oi]
            verts = np.asarray(info.load_mesh().vertices, np.float64)
            rvec, _ = cv2.Rodrigues(b.R[i, k].double().numpy())
            uv, _ = cv2.projectPoints(verts, rvec, b.t[i, k].double().numpy(), K, None)
            uv = uv[:, 0]
            lo = np.maximum(uv.min(0), [-0.5, -0.5])
            hi = np.minimum(uv.max(0), [W - 0.5, H - 0.5])
            if (hi - lo).min() < 4:  # mostly outside the frame
                continue
            # the raster box's edges are within a pixel of the projected extremes
            np.testing.assert_allclose(b.boxes_obj[i, k].numpy(), np.r_[lo, hi], atol=1.0)
            n += 1
    assert n >= 6


def test_frames_are_reproducible_and_independent_of_batching(registry):
    """Frame i is the same pixels whatever batch renders it (photo, distractors, light, camera effects)."""
    cfg = SceneConfig(image_size=(48, 64), objects_per_frame=(1, 2), object_px=(20.0, 30.0), augment=False,
                      light_group=2, distractors=(1, 3))
    scenes = DetectionScenes(registry, cfg, seed=5)
    a, b = scenes.batch([3, 4, 5]), scenes.batch([5])
    assert torch.equal(a.obj_index[2], b.obj_index[0])
    torch.testing.assert_close(a.boxes_visib[2], b.boxes_visib[0], equal_nan=True)
    assert torch.equal(a.images[2], b.images[0]) and torch.equal(a.occluders[2], b.occluders[0])
    assert not torch.equal(a.images[1], a.images[2])
    with pytest.raises(ValueError, match="objects_per_frame"):
        DetectionScenes(registry, SceneConfig(objects_per_frame=(0, 2)))
    with pytest.raises(ValueError, match="appearance"):
        DetectionScenes(registry, SceneConfig(appearance="glossy"))
    with pytest.raises(ValueError, match="distractors"):
        DetectionScenes(registry, SceneConfig(distractors=(2, 1)))


def test_visible_boxes_match_pyrender_labels_minus_occluders(registry):
    """Photo backgrounds, front distractors and the simulated camera: each object's visible box equals the
    box of pyrender's instance label (its own depth test of the same objects, poses and K) minus the
    distractors in front, to a pixel; the masks overlap closely."""
    pytest.importorskip("pyrender", reason="pyrender + OSMesa is the reference renderer")
    from pose6d_ros.rendering.mesh import object_mesh

    cfg = SceneConfig(image_size=SIZE, objects_per_frame=(2, 4), object_px=(30.0, 50.0), augment=False,
                      min_visible_px=10, photo_prob=1.0, distractors=(2, 3), distractor_front=0.7,
                      distractor_px=(20.0, 40.0), appearance="hard")
    scenes = DetectionScenes(registry, cfg, seed=11)
    b = scenes.batch(range(8))
    assert bool(b.occluders.any())
    ref = PyrenderReference([object_mesh(o) for o in registry])  # mesh i == registry index i
    H, W = SIZE
    checked, hidden = 0, 0
    try:
        for i in range(b.obj_index.shape[0]):
            slots = (b.obj_index[i] >= 0).nonzero()[:, 0].numpy()  # the first m slots
            fr = ref.render(b.obj_index[i, slots].numpy(), b.R[i, slots].double().numpy(),
                            b.t[i, slots].double().numpy(), scenes.K, W, H)
            occ = b.occluders[i].numpy()
            for k in slots:
                want = fr.mask(int(k)) & ~occ
                hidden += int((fr.mask(int(k)) & occ).sum())
                if want.sum() < 30:
                    continue
                got = (b.labels[i] == k + 1).numpy()
                np.testing.assert_allclose(b.boxes_visib[i, k].numpy(), _np_box(want), atol=1.0)
                assert (got & want).sum() / (got | want).sum() > 0.85
                checked += 1
    finally:
        ref.close()
    assert checked >= 10 and hidden > 0
