"""The Estimator's geometry chain against OpenCV, driven by an oracle keypoint source."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pose6d_ros.data.crops import CropBatch
from pose6d_ros.models import ModelCard, PoseNet
from pose6d_ros.runtime import Detection, Estimator, OracleKeypointPredictor, PoseEstimate, TorchPredictor


def _scene(camera, card, classes, seed=0):
    """Ground-truth poses for objects ``classes`` spread over the image, and their detection boxes
    (the bounding box of the distorted keypoints, via cv2.projectPoints)."""
    rng = np.random.default_rng(seed)
    n = len(classes)
    R = Rotation.random(n, random_state=seed).as_matrix()
    t = np.stack([rng.uniform(-0.15, 0.15, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.45, 0.8, n)], 1)
    boxes = []
    for i, c in enumerate(classes):
        kp3 = card.keypoints_array[card.object_ids.index(c)]
        uv = _cv2_project(kp3, R[i], t[i], camera)
        boxes.append((*(uv.min(0) - 0.5 - 3), *(uv.max(0) + 0.5 + 3)))
    return R, t, np.array(boxes)


def _cv2_project(points, R, t, camera):
    rvec, _ = cv2.Rodrigues(R)
    uv, _ = cv2.projectPoints(points, rvec, t, np.asarray(camera.K), camera.D_numpy())
    return uv.reshape(-1, 2)


def _image(camera):
    return np.random.default_rng(3).integers(0, 255, (camera.height, camera.width, 3), dtype=np.uint8)


def test_oracle_chain_recovers_poses_like_opencv(registry, card, camera):
    classes = [5, 1, 7, 5, 1]  # mixed classes, repeats
    R, t, boxes = _scene(camera, card, classes)
    oracle = OracleKeypointPredictor(card, camera, torch.as_tensor(R), torch.as_tensor(t))
    est = Estimator(oracle, registry)
    names = {1: "duck", 5: "5", 7: "cat"}  # names and numeric strings both resolve
    dets = [Detection(class_id=names[c], box=tuple(b), score=0.9) for c, b in zip(classes, boxes)]
    out = est.estimate(_image(camera), camera, dets)
    assert len(out) == 5 and all(isinstance(p, PoseEstimate) for p in out)
    for i, (p, c) in enumerate(zip(out, classes)):
        assert p.ok and p.reason == "" and p.object_id == c and p.detection_index == i
        kp3 = card.keypoints_array[card.object_ids.index(c)]
        # keypoints back in the image where OpenCV's lens model puts them
        np.testing.assert_allclose(p.keypoints, _cv2_project(kp3, R[i], t[i], camera), atol=2e-3)
        # pose: OpenCV's PnP on the same (distorted) pixels, and the ground truth
        ok, rvec, tvec = cv2.solvePnP(kp3, p.keypoints, np.asarray(camera.K), camera.D_numpy(),
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        np.testing.assert_allclose(p.t, tvec.ravel(), atol=1e-4)
        np.testing.assert_allclose(p.R, cv2.Rodrigues(rvec)[0], atol=1e-4)
        np.testing.assert_allclose(p.t, t[i], atol=1e-4)
        np.testing.assert_allclose(p.R, R[i], atol=1e-4)
        assert p.reprojection_error < 0.01


def test_bad_detections_are_skipped_with_reasons(registry, card, camera):
    R, t, boxes = _scene(camera, card, [1, 7])
    Rs = np.concatenate([np.tile(R[0], (8, 1, 1)), R[1:2]])
    ts = np.concatenate([np.tile(t[0], (8, 1)), t[1:2]])
    oracle = OracleKeypointPredictor(card, camera, torch.as_tensor(Rs), torch.as_tensor(ts))
    est = Estimator(oracle, registry, min_score=0.3)
    good = tuple(boxes[0])
    dets = [Detection(class_id=c, box=b, score=s) for c, b, s in [
        ("duck", good, 0.9),                         # 0 fine
        ("zebra", good, 0.9),                        # 1 unknown class
        ("glue", good, 0.9),                         # 2 in the registry, not in the model
        ("duck", (np.nan, 1.0, 50.0, 60.0), 0.9),    # 3 non-finite box
        ("duck", (100.0, 100.0, 100.0, 150.0), 0.9),  # 4 empty box
        ("duck", (700.0, 10.0, 760.0, 60.0), 0.9),   # 5 outside the image
        ("duck", good, 0.1),                         # 6 low score
        ("duck", (1.0, 2.0, 3.0), 0.9),              # 7 malformed box
        (7, boxes[1], float("inf")),                 # 8 non-finite score
        ("duck", good, "high"),                      # 9 a score that is not a number
    ]]
    dets.append(("duck", good, 0.9))                 # 10 not a Detection (the old tuple form)
    out = est.estimate(_image(camera), camera, dets)
    assert [p.reason for p in out] == ["", "unknown_class", "not_in_model", "non_finite", "empty_box",
                                       "outside_image", "low_score", "malformed", "non_finite", "malformed",
                                       "malformed"]
    assert [p.ok for p in out] == [True] + [False] * 10
    assert out[2].object_id == 9 and out[2].object_name == "glue" and out[1].object_id is None
    np.testing.assert_allclose(out[0].t, t[0], atol=1e-4)
    for p in out:
        for v in (p.R, p.t, p.keypoints, p.reprojection_error, p.score):
            assert v is None or np.isfinite(v).all()
        if not p.ok:
            assert p.R is None and p.t is None
    assert est.estimate(_image(camera), camera, []) == []


class _ConstantKeypoints:
    """A predictor whose keypoints are all one value: collinear (PnP must fail) or NaN."""

    def __init__(self, card: ModelCard, value: float) -> None:
        self.card, self.value, self.device = card, value, torch.device("cpu")

    def predict(self, crops: CropBatch, object_index, detection_index):
        return torch.full((crops.images.shape[0], 9, 2), self.value)


@pytest.mark.parametrize("value, reason", [(0.1, "pnp_failed"), (float("nan"), "non_finite_keypoints")])
def test_degenerate_network_output_is_reported(registry, card, camera, value, reason):
    est = Estimator(_ConstantKeypoints(card, value), registry)
    out = est.estimate(_image(camera), camera, [Detection(class_id="cat", box=(100.0, 100.0, 180.0, 170.0))] * 2)
    assert [p.reason for p in out] == [reason, reason] and not any(p.ok for p in out)
    for p in out:
        assert p.R is None and p.t is None
        assert p.keypoints is None or np.isfinite(p.keypoints).all()
        assert p.reprojection_error is None or np.isfinite(p.reprojection_error)


def test_torch_network_batches_mixed_classes_like_single_runs(registry, card, camera):
    torch.manual_seed(0)
    net = PoseNet(num_objects=3, crop_size=64).eval()
    with torch.no_grad():
        net.conditioning.affine.normal_()
        net.head[-1].weight.normal_(std=0.05)
    est = Estimator(TorchPredictor(net, card), registry)
    image = _image(camera)
    dets = [Detection(class_id="duck", box=(100.0, 120.0, 200.0, 210.0), score=0.9),
            Detection(class_id="can", box=(300.0, 200.0, 360.0, 330.0), score=0.8),
            Detection(class_id="cat", box=(400.0, 50.0, 520.0, 150.0), score=0.7)]
    together = est.estimate(image, camera, dets)
    alone = [est.estimate(image, camera, [d])[0] for d in dets]
    for a, b in zip(together, alone):
        assert a.keypoints is not None
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)
        assert a.reason in ("", "pnp_failed")
        assert a.t is None or np.isfinite(a.t).all()


def test_construction_and_frame_errors(registry, card, camera):
    net = PoseNet(num_objects=3, crop_size=64)
    moved = ModelCard.create(object_ids=[1, 5, 7], object_names=["duck", "can", "cat"],
                             keypoints=card.keypoints_array * 1.01, crop_size=64, backbone="resnet18",
                             conditioning="cin")
    with pytest.raises(ValueError, match="'can'.*keypoints differ"):
        Estimator(TorchPredictor(net, moved), registry)
    est = Estimator(TorchPredictor(net, card), registry)
    with pytest.raises(ValueError, match="image"):
        est.estimate(np.zeros((100, 100, 3), np.uint8), camera, [Detection(class_id="duck", box=(1, 1, 20, 20))])
    with pytest.raises(ValueError, match="image"):  # even when no detection is usable
        est.estimate(np.zeros((480, 640), np.uint8), camera, [Detection(class_id="zebra", box=(1, 1, 20, 20))])
    with pytest.raises(TypeError, match="model"):
        Estimator(object(), registry)


class _RecordingPredictor:
    """Records the crops it is given and returns the crop centre for every keypoint."""

    def __init__(self, card: ModelCard) -> None:
        self.card, self.device, self.seen = card, torch.device("cpu"), None

    def predict(self, crops: CropBatch, object_index, detection_index):
        self.seen = (crops, object_index.clone(), detection_index.clone())
        return torch.zeros(crops.images.shape[0], 9, 2)


def test_crops_match_opencv_warp_of_the_full_image(registry, card, camera):
    from pose6d_ros.data.crops import crop_image_cv2

    rec = _RecordingPredictor(card)
    est = Estimator(rec, registry)
    image = _image(camera)
    dets = [Detection(class_id="cat", box=(10.0, 20.0, 90.0, 70.0)),     # window spills over the top-left corner
            Detection(class_id="zebra", box=(0.0, 0.0, 5.0, 5.0)),        # skipped: not cropped
            Detection(class_id="duck", box=(300.5, 200.25, 371.0, 290.0)),
            Detection(class_id="can", box=(600.0, 400.0, 639.0, 479.0))]  # bottom-right corner
    est.estimate(image, camera, dets)
    crops, obj_index, det_index = rec.seen
    assert det_index.tolist() == [0, 2, 3] and obj_index.tolist() == [2, 0, 1]
    for i, d in enumerate([0, 2, 3]):
        x0, y0, x1, y1 = dets[d].box
        c, half = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), card.crop_padding * max(x1 - x0, y1 - y0) / 2
        window = np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])
        np.testing.assert_allclose(crops.windows[i].numpy(), window, atol=1e-9)
        ref = crop_image_cv2(image.astype(np.float32) / 255.0, window, card.crop_size)
        np.testing.assert_allclose(crops.images[i].permute(1, 2, 0).numpy(), ref, atol=2e-4)
        # K_crop maps a 3D point to the same crop pixel as the image projection + crop mapping
        s = card.crop_size / (window[2] - window[0])
        K = np.asarray(camera.K)
        A = np.array([[s, 0, -window[0] * s - 0.5], [0, s, -window[1] * s - 0.5], [0, 0, 1]])
        np.testing.assert_allclose(crops.K[i].numpy(), A @ K, atol=1e-9)


def test_float_tensor_image_gives_the_same_crops(registry, card, camera):
    rec = _RecordingPredictor(card)
    est = Estimator(rec, registry)
    image = _image(camera)
    dets = [Detection(class_id="cat", box=(10.0, 20.0, 90.0, 70.0)),
            Detection(class_id="duck", box=(300.5, 200.25, 371.0, 290.0))]
    est.estimate(image, camera, dets)
    from_uint8 = rec.seen[0].images.clone()
    est.estimate(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, camera, dets)
    torch.testing.assert_close(rec.seen[0].images, from_uint8, atol=1e-5, rtol=0)
