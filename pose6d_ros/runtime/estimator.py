"""The ROS-free estimator: image + camera + 2D detections -> 6D poses (``docs/architecture.md``).

Per frame: one square crop per detection (``data.crops``, batched ``grid_sample``), ONE batched Φ
forward with each detection's own CIN class (Eq. 4), normalised keypoints -> crop pixels -> image
pixels -> undistorted pixels, ONE batched PnP (``geometry.pnp``). A detection that cannot be handled
is returned with ``ok=False`` and a ``reason``; the estimator never raises for a detection and never
returns NaN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pose6d_ros._checks import check_shape
from pose6d_ros.data.crops import CropBatch, crop_images, square_windows
from pose6d_ros.geometry.camera import CameraModel, crop_intrinsics, undistort_points
from pose6d_ros.geometry.pnp import DEFAULT_ITERATIONS, solve_pnp
from pose6d_ros.registry import ObjectRegistry
from pose6d_ros.runtime.backends import KeypointPredictor, make_predictor
from pose6d_ros.runtime.detection import Detection

#: Values of :attr:`PoseEstimate.reason` (``""`` when ``ok``).
SKIP_REASONS = {
    "malformed": "not a Detection, or its box is not 4 numbers or its score not a number",
    "non_finite": "box or score is NaN or infinite",
    "unknown_class": "the class id is not in the object registry",
    "not_in_model": "the object is in the registry but the model was not trained on it",
    "low_score": "score below min_score",
    "empty_box": "x1 <= x0 or y1 <= y0",
    "small_box": "the box's longer side is below min_box_px",
    "outside_image": "the box does not overlap the image",
    "non_finite_keypoints": "the network returned NaN or infinite keypoints",
    "pnp_failed": "PnP failed (degenerate keypoints, object behind the camera, ...)",
    "depth_out_of_range": "the estimated depth t_z is outside depth_range",
}


@dataclass(frozen=True)
class PoseEstimate:
    """The result for one detection, in the order of the input detections.

    Attributes:
        detection_index: position of the detection in the input list.
        class_id: the detection's class id, as given.
        object_id: registry id (``None`` if the class is unknown).
        object_name: registry name (``None`` if the class is unknown).
        score: detector score (0.0 if it was not finite).
        ok: whether ``R``/``t`` are a pose estimate.
        reason: ``""`` when ``ok``, otherwise one of :data:`SKIP_REASONS`.
        R: ``(3, 3)`` float64 rotation model -> camera (``None`` unless ``ok``).
        t: ``(3,)`` float64 translation, metres (``None`` unless ``ok``).
        keypoints: ``(K, 2)`` float64 predicted keypoints in image pixels as seen (distorted), or
            ``None`` if the network did not run on this detection.
        reprojection_error: RMS reprojection error of the PnP fit, undistorted pixels (``None``
            unless PnP ran).
    """

    detection_index: int
    class_id: Union[str, int]
    object_id: Optional[int]
    object_name: Optional[str]
    score: float
    ok: bool
    reason: str = ""
    R: Optional[np.ndarray] = None
    t: Optional[np.ndarray] = None
    keypoints: Optional[np.ndarray] = None
    reprojection_error: Optional[float] = None


class Estimator:
    """Image + camera + detections -> one :class:`PoseEstimate` per detection.

    Args:
        model: a checkpoint (``models.save_model``), an ONNX file (``runtime.export_onnx``), or a
            ready :class:`~pose6d_ros.runtime.backends.KeypointPredictor`.
        registry: the object registry; the model's objects must match it (same ids, names and
            keypoints) or construction fails with ``ValueError``.
        backend: ``"auto"`` (by file extension), ``"torch"`` or ``"onnxruntime"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        min_score: detections scoring below are skipped (reason ``"low_score"``).
        providers: ONNX Runtime execution providers, overriding the TensorRT > CUDA > CPU choice.
        intra_op_threads: ONNX Runtime intra-op threads (0: its default).
        pnp_iterations: Levenberg-Marquardt iterations of the PnP refinement.
        min_box_px: detections whose box's longer side is shorter are skipped (reason ``"small_box"``):
            a few pixels carry no pose (a 1-px box gave an object 48 m away).
        depth_range: ``(min, max)`` metres; a pose whose ``t_z`` falls outside is returned with
            reason ``"depth_out_of_range"`` instead of ``ok``.

    Example:
        >>> est = Estimator("model.onnx", ObjectRegistry.from_yaml("config/objects.yaml"))  # doctest: +SKIP
        >>> poses = est.estimate(image, camera,
        ...                      [Detection(class_id="duck", box=(100, 80, 180, 150), score=0.9)])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, KeypointPredictor],
        registry: ObjectRegistry,
        *,
        backend: str = "auto",
        device: str = "auto",
        min_score: float = 0.0,
        providers: Optional[Sequence[str]] = None,
        intra_op_threads: int = 0,
        pnp_iterations: int = DEFAULT_ITERATIONS,
        min_box_px: float = 0.0,
        depth_range: Tuple[float, float] = (0.0, float("inf")),
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            predictor = make_predictor(model, backend=backend, device=device, providers=providers,
                                       intra_op_threads=intra_op_threads)
        else:
            predictor = model
        if not isinstance(predictor, KeypointPredictor):
            raise TypeError(f"model: expected a path or a KeypointPredictor, got {type(model).__name__}")
        predictor.card.check_against(registry)
        if not np.isfinite(min_score):
            raise ValueError(f"min_score must be finite, got {min_score}")
        if not (np.isfinite(min_box_px) and min_box_px >= 0):
            raise ValueError(f"min_box_px must be finite and >= 0, got {min_box_px}")
        if len(depth_range) != 2 or not 0 <= depth_range[0] < depth_range[1]:
            raise ValueError(f"depth_range must be (min, max) with 0 <= min < max, got {tuple(depth_range)}")
        self.predictor = predictor
        self.registry = registry
        self.card = predictor.card
        self.min_score = float(min_score)
        self.pnp_iterations = int(pnp_iterations)
        self.min_box_px = float(min_box_px)
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        self._points_3d = torch.as_tensor(self.card.keypoints_array, dtype=torch.float64)  # (N, K, 3)
        self._class_cache: dict = {}

    # ------------------------------------------------------------------ public
    def estimate(self, image: Union[np.ndarray, torch.Tensor], camera: CameraModel,
                 detections: Sequence[Detection]) -> list[PoseEstimate]:
        """Poses of the detected objects in one frame.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (NumPy or torch), or a ``(3, H, W)`` float tensor in
                ``[0, 1]``; ``H, W`` must match ``camera``.
            camera: intrinsics and distortion of the image.
            detections: :class:`~pose6d_ros.runtime.detection.Detection` records; anything else,
                or a box that is not 4 numbers, comes back with reason ``"malformed"``.

        Returns:
            One :class:`PoseEstimate` per detection, same order.

        Raises:
            ValueError: if the image is malformed or does not match the camera size (a
            detection never raises).
        """
        image = _checked_image(image, camera)
        parsed = [_parse_detection(d) for d in detections]
        n = len(parsed)
        if n == 0:
            return []
        boxes = np.array([p[1] if p is not None else (np.nan,) * 4 for p in parsed], dtype=np.float64)
        scores = np.array([p[2] if p is not None else np.nan for p in parsed], dtype=np.float64)
        classes = [self._resolve(p[0]) if p is not None else (None, None, None) for p in parsed]
        obj_index = np.array([c[2] if c[2] is not None else -1 for c in classes], dtype=np.int64)

        W, H = camera.width, camera.height
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        with np.errstate(invalid="ignore"):
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            big_enough = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_box_px
            inside = ((boxes[:, 2] > -0.5) & (boxes[:, 0] < W - 0.5)
                      & (boxes[:, 3] > -0.5) & (boxes[:, 1] < H - 0.5))
            confident = scores >= self.min_score
        reasons = np.full(n, "", dtype=object)
        # Later assignments win, so the first failing check in this list is reported.
        for mask, reason in reversed([
            (np.array([p is None for p in parsed]), "malformed"),
            (~finite, "non_finite"),
            (np.array([c[0] is None for c in classes]), "unknown_class"),
            (np.array([c[0] is not None and c[2] is None for c in classes]), "not_in_model"),
            (~confident, "low_score"),
            (~nonempty, "empty_box"),
            (~big_enough, "small_box"),
            (~inside, "outside_image"),
        ]):
            reasons[mask] = reason
        keep = np.flatnonzero(reasons == "")

        R = t = kp_img = err = None
        if len(keep):
            R, t, kp_img, err, fail = self._run(image, camera, boxes[keep], obj_index[keep], keep)
            reasons[keep[fail != ""]] = fail[fail != ""]

        results = []
        pos = {int(d): i for i, d in enumerate(keep)}
        for d in range(n):
            object_id, object_name, _ = classes[d]
            score = float(scores[d]) if np.isfinite(scores[d]) else 0.0
            class_id = parsed[d][0] if parsed[d] is not None else ""
            i = pos.get(d)
            ok = reasons[d] == ""
            kp = kp_img[i] if i is not None and np.isfinite(kp_img[i]).all() else None
            results.append(PoseEstimate(
                detection_index=d, class_id=class_id, object_id=object_id, object_name=object_name,
                score=score, ok=ok, reason=str(reasons[d]),
                R=R[i] if ok else None, t=t[i] if ok else None, keypoints=kp,
                reprojection_error=float(err[i]) if i is not None and np.isfinite(err[i]) else None,
            ))
        return results

    # ------------------------------------------------------------------ steps
    def _resolve(self, class_id) -> Tuple[Optional[int], Optional[str], Optional[int]]:
        """class id -> (object id, name, model object index); ``None`` where unknown."""
        key = str(class_id).strip()
        if key not in self._class_cache:
            try:
                obj = self.registry.resolve(key)
            except KeyError:
                self._class_cache[key] = (None, None, None)
            else:
                index = self.card.object_ids.index(obj.id) if obj.id in self.card.object_ids else None
                self._class_cache[key] = (int(obj.id), str(obj.name), index)
        return self._class_cache[key]

    def _run(self, image, camera: CameraModel, boxes: np.ndarray, obj_index: np.ndarray, det_index: np.ndarray):
        """Crop, predict, lift and solve the kept detections (all batched)."""
        S = self.card.crop_size
        device = self.predictor.device
        crops = detection_crops(image, camera, boxes, S, self.card.crop_padding, device)
        windows = crops.windows
        index = torch.as_tensor(obj_index, device=device)
        normalised = self.predictor.predict(crops, index, torch.as_tensor(det_index))
        # Geometry in float64 on the CPU: a handful of small problems, precision matters more.
        uv_img = _crop_to_image(normalised.detach().to("cpu", torch.float64), windows)
        B = uv_img.shape[0]
        K64 = camera.K_tensor(torch.float64).expand(B, 3, 3)
        finite_kp = torch.isfinite(uv_img).flatten(1).all(dim=1)
        safe_uv = torch.where(finite_kp[:, None, None], uv_img, torch.zeros_like(uv_img))
        uv_ideal = undistort_points(safe_uv, K64, camera.D_tensor(torch.float64).expand(B, -1))
        pnp = solve_pnp(uv_ideal, self._points_3d[torch.as_tensor(obj_index)], K64,
                        iterations=self.pnp_iterations)
        failed = pnp.failed | ~torch.isfinite(pnp.R).flatten(1).all(1) | ~torch.isfinite(pnp.t).all(1)
        fail = np.full(B, "", dtype=object)
        z = pnp.t[:, 2].numpy()
        with np.errstate(invalid="ignore"):
            fail[(z < self.depth_range[0]) | (z > self.depth_range[1])] = "depth_out_of_range"
        fail[failed.numpy()] = "pnp_failed"
        fail[~finite_kp.numpy()] = "non_finite_keypoints"
        return (pnp.R.numpy(), pnp.t.numpy(), uv_img.numpy(), pnp.reprojection_error.numpy(), fail)


def detection_crops(image: Union[np.ndarray, torch.Tensor], camera: CameraModel, boxes: np.ndarray,
                    crop_size: int, padding: float, device: Union[str, torch.device] = "cpu") -> CropBatch:
    """The crops the :class:`Estimator` feeds its predictor for the boxes ``(B, 4)`` of one image.

    Square windows (``data.crops.square_windows`` with the model card's ``padding``) resampled to
    ``crop_size`` by one ``grid_sample``. Public so that INT8 calibration
    (``runtime.onnx_export.calibration_crops``) sees exactly the crops inference does.

    Args:
        image: ``(H, W, 3)`` uint8 RGB or ``(3, H, W)`` float in ``[0, 1]``, matching ``camera``.
        camera: the image's camera (only its size and K are used: crops are cut from the image as seen).
        boxes: ``(B, 4)`` finite, non-empty ``(x0, y0, x1, y1)`` boxes.
        crop_size: S.
        padding: window side over the box's longer side.
        device: where the crop images are made.

    Returns:
        ``CropBatch`` with ``images (B, 3, S, S)`` float32 in ``[0, 1]`` on ``device``, ``K (B, 3, 3)``
        float64 crop intrinsics and ``windows (B, 4)`` float64.
    """
    image = _checked_image(image, camera)
    windows = square_windows(torch.as_tensor(np.asarray(boxes, dtype=np.float64)), padding)  # (B, 4)
    region, offset = _image_region(image, camera, windows.numpy(), torch.device(device))
    local = (windows - torch.from_numpy(offset)).to(device, torch.float32)
    crops = crop_images(region, local, crop_size)  # (B, 3, S, S), a transposed view of one grid_sample
    # The [0, 1] scaling writes a contiguous batch: the predictors would copy a strided one anyway.
    images = torch.mul(crops, 1.0 / 255.0, out=torch.empty(crops.shape, dtype=crops.dtype, device=crops.device))
    return CropBatch(
        images=images,
        K=crop_intrinsics(camera.K_tensor(torch.float64).expand(len(windows), 3, 3), windows, crop_size),
        windows=windows,
    )


def _image_region(image: torch.Tensor, camera: CameraModel, windows: np.ndarray,
                  device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
    """The part of the image the crop ``windows`` ``(B, 4)`` can read, as ``(1, 3, h, w)`` float in
    [0, 255] on ``device``, and its pixel offset ``(ox, oy, ox, oy)`` in the image.

    Only that region is converted to float: for a few detections it is a small part of the
    frame. Scaling to [0, 1] is left to the (much smaller) crops, since resampling is linear.
    """
    hwc = image.dtype == torch.uint8
    # Bilinear taps reach at most one pixel past a window; one more for rounding.
    x0 = int(np.clip(np.floor(windows[:, 0].min()) - 2, 0, camera.width))
    y0 = int(np.clip(np.floor(windows[:, 1].min()) - 2, 0, camera.height))
    x1 = int(np.clip(np.ceil(windows[:, 2].max()) + 3, x0, camera.width))
    y1 = int(np.clip(np.ceil(windows[:, 3].max()) + 3, y0, camera.height))
    if hwc:
        region = image[y0:y1, x0:x1].to(device).permute(2, 0, 1).unsqueeze(0).float()
    else:
        region = image[:, y0:y1, x0:x1].to(device, torch.float32).unsqueeze(0) * 255.0
    return region, np.array([x0, y0, x0, y0], dtype=np.float64)


def _checked_image(image, camera: CameraModel) -> torch.Tensor:
    """``image`` as a tensor (no copy), after checking its type and size against ``camera``."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a NumPy array or a torch.Tensor, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        check_shape(image, (camera.height, camera.width, 3), "image")
    elif image.is_floating_point():
        check_shape(image, (3, camera.height, camera.width), "image")
    else:
        raise TypeError(f"image: expected uint8 (H, W, 3) or float (3, H, W), got {image.dtype}")
    return image


def _crop_to_image(normalised: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Normalised crop coordinates ``(B, K, 2)`` -> full-image pixels through the inverse of the crop
    mapping ``u_crop = (u - x0) * S / (x1 - x0) - 0.5`` (conventions.md); the crop side S cancels out."""
    # u_crop + 0.5 = (n + 1) * S / 2 (normalized_to_pixels), so u = (n + 1) * (x1 - x0) / 2 + x0.
    origin = windows[:, None, :2]
    half = (windows[:, None, 2:] - origin) * 0.5
    return torch.addcmul(origin, normalised + 1.0, half)


def _parse_detection(d: Detection) -> Optional[Tuple[Union[str, int], Tuple[float, ...], float]]:
    """``(class_id, box, score)`` with a 4-float box, or ``None`` if ``d`` is not a readable :class:`Detection`."""
    if not isinstance(d, Detection):
        return None
    class_id, box, score = d.class_id, d.box, d.score
    try:
        box = tuple(float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
        if len(box) != 4:
            return None
        if isinstance(class_id, (np.integer,)):
            class_id = int(class_id)
        return class_id, box, float(score)
    except (TypeError, ValueError):
        return None
