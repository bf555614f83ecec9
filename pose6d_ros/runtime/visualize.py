"""Pose overlays: the projected 3D box and axes of a pose over an image, contact sheets, and the demo's
overlay pictures of a BOP split (estimate green, ground truth grey).

Images are ``(H, W, 3)`` uint8 RGB; colours are RGB triples. Points are projected with the package's one
pinhole formula (:func:`pose6d_ros.geometry.keypoints.project_camera_points`), after the lens distortion
(:func:`pose6d_ros.geometry.camera.distort_points`) when a camera has one; lines are drawn with OpenCV
at 1/16 px precision (``shift=4``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from pose6d_ros._io import atomic_write_bytes
from pose6d_ros.geometry.camera import CameraModel, distort_points
from pose6d_ros.geometry.keypoints import project_camera_points
from pose6d_ros.registry import ObjectRegistry

__all__ = ["ESTIMATE_COLOR", "GT_COLOR", "BOX_EDGES", "project_model_points", "draw_pose_overlay", "draw_boxes",
           "contact_sheet", "overlay_frame", "write_overlays", "PoseKey"]

#: RGB colour of an estimate's box and axes.
ESTIMATE_COLOR = (0, 230, 0)
#: RGB colour of the ground truth's box and axes.
GT_COLOR = (170, 170, 170)
#: The 12 edges of the 8 box corners in the keypoint order of docs/conventions.md (corner
#: ``i = 4*ix + 2*iy + iz``: two corners share an edge when their indices differ in one bit).
BOX_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])
_SHIFT = 4  # cv2 fixed-point bits: coordinates drawn at 1/16 px
_MIN_DEPTH = 1e-3  # metres: an edge with an end closer than this (or behind the camera) is not drawn
#: ``(scene_id, im_id, obj_id)``: how :func:`write_overlays` keys the estimates.
PoseKey = Tuple[int, int, int]


def project_model_points(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                         D: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels of model points under a pose (vectorised over points).

    Args:
        points: ``(N, 3)`` model-frame points, metres.
        K: ``(3, 3)`` intrinsics; D: ``(M,)`` OpenCV/ROS distortion coefficients (``M`` in 0, 4, 5, 8) or None.
        R: ``(3, 3)`` model -> camera rotation; t: ``(3,)`` metres.

    Returns:
        ``(N, 2)`` float64 pixels ``(u, v)`` (OpenCV convention: pixel centres at integers) and ``(N,)`` bool:
        the point is finite and at least 1 mm in front of the camera (the others' pixels mean nothing).
    """
    P = np.asarray(points, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64).reshape(1, 3)
    front = np.isfinite(P).all(axis=1) & (P[:, 2] > _MIN_DEPTH)  # (x, y, inf) would project to (cx, cy)
    P[~front] = (0.0, 0.0, 1.0)  # finite placeholders; flagged invalid
    cam = torch.from_numpy(P)[None]
    if D is not None and np.any(D):
        xy = distort_points(cam[..., :2] / cam[..., 2:3], torch.from_numpy(np.asarray(D, np.float64).reshape(1, -1)))
        cam = torch.cat((xy, torch.ones_like(xy[..., :1])), dim=-1)
    uv = project_camera_points(cam, torch.from_numpy(np.asarray(K, np.float64))[None])[0].numpy()
    return uv, front & np.isfinite(uv).all(axis=1)


def _fixed(uv: np.ndarray) -> np.ndarray:
    """float pixels -> int32 cv2 fixed-point coordinates (``shift=_SHIFT``), clipped far from int32 overflow."""
    return np.round(np.clip(uv, -1e5, 1e5) * (1 << _SHIFT)).astype(np.int32)


def draw_pose_overlay(image: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, keypoints: np.ndarray,
                      color: Sequence[int] = ESTIMATE_COLOR, axes: bool = True, thickness: int = 1,
                      label: Optional[str] = None, D: Optional[np.ndarray] = None,
                      antialias: bool = True) -> np.ndarray:
    """A copy of ``image`` with the pose's projected 3D box (and model axes) drawn in ``color``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        K: ``(3, 3)`` intrinsics; D: distortion coefficients (``None``: pinhole).
        R: ``(3, 3)``, t: ``(3,)`` metres: the model -> camera pose.
        keypoints: ``(8, 3)`` or ``(9, 3)`` model-frame box corners (``ObjectInfo.keypoints``,
            :func:`pose6d_ros.registry.box_keypoints_np`); only the first 8 are drawn.
        color: RGB of the box and axes.
        axes: also draw the model frame's x, y, z axes from its origin, each half the box's largest side
            long, with arrow heads and ``x``/``y``/``z`` letters.
        thickness: line width in pixels.
        label: text written at the first visible corner.
        antialias: ``cv2.LINE_AA`` (pictures) or ``cv2.LINE_8`` (exact pixel sets, for tests).

    Returns:
        ``(H, W, 3)`` uint8; edges with an end behind the camera are left out.
    """
    out = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    corners = np.asarray(keypoints, np.float64)[:8]
    if corners.shape != (8, 3):
        raise ValueError(f"keypoints: expected shape (8, 3) or (9, 3), got {np.asarray(keypoints).shape}")
    length = 0.5 * float(np.ptp(corners, axis=0).max())
    axis_pts = np.vstack([np.zeros((1, 3)), length * np.eye(3)])
    uv, ok = project_model_points(np.vstack([corners, axis_pts]), K, R, t, D)
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    col = tuple(int(c) for c in color)
    keep = ok[BOX_EDGES].all(axis=1)
    if keep.any():
        cv2.polylines(out, list(_fixed(uv[BOX_EDGES[keep]])), False, col, thickness, line, _SHIFT)
    if axes and ok[8]:
        o = _fixed(uv[8])
        for k, name in enumerate("xyz"):
            if ok[9 + k]:
                tip = _fixed(uv[9 + k])
                cv2.arrowedLine(out, tuple(map(int, o)), tuple(map(int, tip)), col, thickness, line, _SHIFT, 0.15)
                if antialias:
                    cv2.putText(out, name, tuple(int(v) for v in np.round(uv[9 + k]) + (3, -3)),
                                cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA)
    if label and ok[:8].any():
        at = np.round(uv[:8][ok[:8]][0]).astype(int)
        cv2.putText(out, str(label), (int(at[0]), int(at[1]) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA)
    return out


def draw_boxes(rgb: np.ndarray, camera: CameraModel, poses: Sequence, registry: ObjectRegistry) -> np.ndarray:
    """Copy of ``rgb`` ``(H, W, 3)`` uint8 with each ``ok`` estimate's 3D box drawn, with the camera's
    distortion (the estimator node's ``~/debug_image``)."""
    out = np.ascontiguousarray(rgb.copy())
    K, D = np.asarray(camera.K, np.float64), camera.D_numpy()
    for p in poses:
        if p.ok:
            out = draw_pose_overlay(out, K, p.R, p.t, registry.get(p.object_id).keypoints, ESTIMATE_COLOR,
                                    axes=False, label=str(p.object_name), D=D)
    return out


def contact_sheet(images: Sequence[np.ndarray], cols: int = 4, labels: Optional[Sequence[str]] = None,
                  tile: Optional[Tuple[int, int]] = None, pad: int = 4,
                  background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Tile images row-major on a grid of ``cols`` columns.

    Args:
        images: ``(H_i, W_i, 3)`` uint8 RGB images; each is resized to ``tile``.
        cols: columns (fewer when there are fewer images).
        labels: one caption per image, written in its top-left corner on a dark strip.
        tile: ``(width, height)`` of a cell (default: the first image's size).
        pad: pixels between cells and around the sheet.
        background: RGB of the gaps.

    Returns:
        ``(rows * (h + pad) + pad, cols * (w + pad) + pad, 3)`` uint8.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet: no images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"contact_sheet: {len(labels)} labels for {len(images)} images")
    if cols < 1:
        raise ValueError(f"contact_sheet: cols must be >= 1, got {cols}")
    w, h = tile or (images[0].shape[1], images[0].shape[0])
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    sheet = np.empty((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    sheet[:] = np.asarray(background, np.uint8)
    for i, img in enumerate(images):
        cell = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        cell = np.ascontiguousarray(cell[..., :3].astype(np.uint8))
        if labels is not None and labels[i]:
            (tw, th), base = cv2.getTextSize(str(labels[i]), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            cell[: th + base + 4, : tw + 6] //= 3
            cv2.putText(cell, str(labels[i]), (3, th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = cell
    return sheet


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 failure
        raise OSError(f"{path}: cv2.imencode failed")
    return atomic_write_bytes(path, buf.tobytes())


def overlay_frame(rgb: np.ndarray, K: np.ndarray, keypoints: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray,
                  R: Optional[np.ndarray], t: Optional[np.ndarray], thickness: int = 2) -> np.ndarray:
    """``rgb`` with the ground truth (grey) and, on top, the estimate (green; ``R = None``: none) drawn."""
    out = draw_pose_overlay(rgb, K, R_gt, t_gt, keypoints, GT_COLOR, thickness=thickness)
    if R is not None and t is not None:
        out = draw_pose_overlay(out, K, R, t, keypoints, ESTIMATE_COLOR, thickness=thickness)
    return out


def _zoom_box(uv: np.ndarray, width: int, height: int, margin: float = 0.35, min_size: int = 96):
    """A square window ``(x0, y0, x1, y1)`` around pixels ``uv (N, 2)``, widened by ``margin`` of its side, kept
    inside the image where it fits."""
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    side = int(np.clip(max(float((hi - lo).max()) * (1 + 2 * margin), min_size), 1, min(width, height)))
    cx, cy = (lo + hi) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    return x0, y0, x0 + side, y0 + side


def write_overlays(split_dir: Union[str, Path], poses_by_instance: Mapping[PoseKey, Tuple[np.ndarray, np.ndarray]],
                   registry: ObjectRegistry, out_dir: Union[str, Path], per_object: int = 3, cols: int = 0,
                   tile: int = 192) -> Dict[str, object]:
    """Overlay pictures of estimates on a labelled BOP split: a few frames per object and a contact sheet.

    For each object with estimates, ``per_object`` of its estimated GT instances, evenly spread over the
    sorted ``(scene_id, im_id)`` keys, are drawn: ground truth grey, estimate green (boxes and axes).

    Args:
        split_dir: the BOP split folder (``data/lm-lite-demo/test``); its ``scene_gt.json`` gives the grey poses.
        poses_by_instance: ``{(scene_id, im_id, obj_id): (R (3, 3), t (3,) metres)}``, the estimates
            (:func:`pose6d_ros.evaluation.plots.poses_from_predictions` builds it from ``evaluate``'s predictions).
        registry: the objects (box corners, names).
        out_dir: written: ``<name>_<scene>_<im>.png`` (full frames) and ``contact_sheet.png``
            (tiles zoomed on the object).
        per_object: frames per object.
        cols: contact-sheet columns (0: ``per_object``, one object per row).
        tile: contact-sheet cell side in pixels.

    Returns:
        ``{"frames": [Path, ...], "contact_sheet": Path}``.
    """
    from pose6d_ros.data.bop import BopDataset

    if per_object < 1:
        raise ValueError(f"per_object must be >= 1, got {per_object}")
    out_dir = Path(out_dir)
    ds = BopDataset(split_dir, obj_ids=sorted({int(k[2]) for k in poses_by_instance}))
    ds.require_labels()
    by_obj: Dict[int, List] = {}
    for inst in ds.instances:
        if (inst.scene_id, inst.im_id, inst.obj_id) in poses_by_instance:
            by_obj.setdefault(inst.obj_id, []).append(inst)
    if not by_obj:
        raise ValueError(f"write_overlays: none of the {len(poses_by_instance)} estimates is a GT instance of "
                         f"{split_dir}")
    frames: List[Path] = []
    tiles: List[np.ndarray] = []
    labels: List[str] = []
    for obj_id in sorted(by_obj):
        insts = by_obj[obj_id]
        pick = np.unique(np.linspace(0, len(insts) - 1, min(per_object, len(insts))).round().astype(int))
        info = registry.get(obj_id)
        for i in pick:
            inst = insts[int(i)]
            gt = ds.gt(inst)
            K = np.asarray(ds.camera(inst.scene_id, inst.im_id).K, np.float64)
            R, t = (np.asarray(a, np.float64) for a in poses_by_instance[(inst.scene_id, inst.im_id, obj_id)])
            rgb = ds.load_rgb(inst.scene_id, inst.im_id)
            img = overlay_frame(rgb, K, info.keypoints, gt.R, gt.t, R, t)
            frames.append(_write_png(out_dir / f"{info.name}_{inst.scene_id:06d}_{inst.im_id:06d}.png", img))
            uv, ok = project_model_points(info.keypoints[:8], K, gt.R, gt.t)
            x0, y0, x1, y1 = _zoom_box(uv[ok] if ok.any() else np.array([[0.0, 0.0]]), img.shape[1], img.shape[0])
            tiles.append(img[y0:y1, x0:x1])
            labels.append(f"{info.name} {inst.scene_id}/{inst.im_id}")
    sheet = contact_sheet(tiles, cols or per_object, labels, tile=(tile, tile))
    return {"frames": frames, "contact_sheet": _write_png(out_dir / "contact_sheet.png", sheet)}
