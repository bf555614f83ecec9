"""Losses of the self-supervised objective (Sock et al. 2020, Sec. 3.2, Eq. 1-3).

Every function here is pure: tensors in, a scalar tensor out. Keypoints are in normalised crop
coordinates ``[-1, 1]`` (see ``docs/conventions.md``), so the Huber ``delta`` is in those units
too (``delta = 0.02`` is half a pixel on a 64-px crop).

Reductions: every loss is a mean over the batch (and over keypoints / coordinates), so that a
data-parallel mean of per-rank losses equals the loss over the concatenated batch.
An optional per-sample ``weight`` ``(B,)`` (1 = keep, 0 = reject) lets the self-supervised loop
drop samples whose PnP failed without changing shapes; the mean is then over kept samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from pose6d_ros._checks import check_shape

__all__ = [
    "LossWeights",
    "huber",
    "pose_consistency",
    "pose_consistency2",
    "synthetic_supervision",
    "perceptual_distance",
    "mask_blend",
    "box_consistency",
    "total_loss",
]


@dataclass(frozen=True)
class LossWeights:
    """λ of Eq. 3. The paper's values are (1, 1, 1, 20)."""

    pose: float = 1.0
    pose2: float = 1.0
    sup: float = 1.0
    percep: float = 20.0
    box: float = 1.0  # ours, not the paper's: see box_consistency
    refine: float = 1.0  # ours: Huber(h1, π(refined pose)), see selfsup_step.SelfSupStep


def _weighted_mean(per_sample: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    check_shape(weight, (per_sample.shape[0],), "weight")
    w = weight.to(per_sample.dtype)
    # clamp keeps an all-rejected batch at 0 loss (and 0 gradient) instead of NaN
    return (per_sample * w).sum() / w.sum().clamp_min(1.0)


def huber(
    pred: torch.Tensor,
    target: torch.Tensor,
    delta: float = 0.02,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Huber loss ``‖pred − target‖_hub``, averaged over every element (Eq. 1 and 2 use it).

    ``hub(e) = 0.5 e²`` if ``|e| ≤ δ`` else ``δ (|e| − 0.5 δ)``, per coordinate.

    Args:
        pred: ``(B, *)``.
        target: same shape as ``pred``.
        delta: transition point, in the units of ``pred`` (normalised crop units for keypoints).
        weight: optional ``(B,)`` per-sample weights; the mean is over the kept weight.

    Returns:
        scalar tensor.

    Example:
        >>> huber(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), delta=0.5)
        tensor(0.1875)
    """
    if pred.shape != target.shape:
        raise ValueError(f"huber: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if delta <= 0:
        raise ValueError(f"huber: delta must be > 0, got {delta}")
    per_elem = torch.nn.functional.huber_loss(pred, target, reduction="none", delta=delta)
    per_sample = per_elem.reshape(pred.shape[0], -1).mean(dim=1)
    return _weighted_mean(per_sample, weight)


def pose_consistency(
    h2: torch.Tensor, h3: torch.Tensor, delta: float = 0.02, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """L_pose (Eq. 1): ``Huber(Φ(x_m) − Φ(r1))`` between the masked-real and rendered predictions.

    Args:
        h2: ``(B, K, 2)`` keypoints predicted on the masked real crop.
        h3: ``(B, K, 2)`` keypoints predicted on the rendered crop.
    """
    check_shape(h2, ("B", "K", 2), "h2")
    check_shape(h3, ("B", "K", 2), "h3")
    return huber(h2, h3, delta, weight)


def pose_consistency2(
    h1: torch.Tensor, h2: torch.Tensor, delta: float = 0.02, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """L_pose2 (Sec. 3.2, silhouette masking): ``Huber(Φ(x_r) − Φ(x_m))``.

    Args:
        h1: ``(B, K, 2)`` keypoints predicted on the raw real crop.
        h2: ``(B, K, 2)`` keypoints predicted on the masked real crop.
    """
    check_shape(h1, ("B", "K", 2), "h1")
    check_shape(h2, ("B", "K", 2), "h2")
    return huber(h1, h2, delta, weight)


def synthetic_supervision(
    h3: Optional[torch.Tensor],
    h3_label: Optional[torch.Tensor],
    h_g_pred: Optional[torch.Tensor],
    h_g: Optional[torch.Tensor],
    delta: float = 0.02,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """L_sup (Eq. 2): ``Huber(h3 − sg[π(y1)]) + Huber(Φ(x_g) − h_g)``.

    The label of the rendered image, ``π(y1)``, is exact whatever ``y1`` is, so it is detached here:
    it is a label, not a path for gradients (docs/method.md, step 8). Either term may be ``None``
    (ablation / supervised-only use); at least one must be given.

    Args:
        h3: ``(B, K, 2)`` prediction on the rendered crop ``r1``.
        h3_label: ``(B, K, 2)`` projection of the keypoints at ``y1``.
        h_g_pred: ``(Bg, K, 2)`` prediction on synthetic crops ``x_g``.
        h_g: ``(Bg, K, 2)`` their labels.
        weight: optional ``(B,)`` weights for the rendered term only.
    """
    terms = []
    if h3 is not None:
        if h3_label is None:
            raise ValueError("synthetic_supervision: h3 given without h3_label")
        check_shape(h3, ("B", "K", 2), "h3")
        check_shape(h3_label, ("B", "K", 2), "h3_label")
        terms.append(huber(h3, h3_label.detach(), delta, weight))
    if h_g_pred is not None:
        if h_g is None:
            raise ValueError("synthetic_supervision: h_g_pred given without h_g")
        check_shape(h_g_pred, ("B", "K", 2), "h_g_pred")
        check_shape(h_g, ("B", "K", 2), "h_g")
        terms.append(huber(h_g_pred, h_g, delta))
    if not terms:
        raise ValueError("synthetic_supervision: neither term given")
    return torch.stack(terms).sum()


def _unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS (Zhang et al. 2018): each spatial feature vector is scaled to unit length across channels
    return f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + eps)


def perceptual_distance(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    region: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """L_percep (Eq. 3's fourth term), LPIPS-style without learned channel weights.

    For each layer ``l``: unit-normalise the features across channels at every pixel, take the
    squared difference summed over channels (in ``[0, 4]``), average over pixels; then average
    over layers. The unit normalisation bounds the term, so λ4 = 20 stays sane (on a toy problem
    raw features gave gradient norms in the hundreds).

    Args:
        feats_a: per layer ``(B, C_l, H_l, W_l)`` features of the rendered crop.
        feats_b: the same layers for the masked real crop.
        weight: optional ``(B,)``.
        region: optional ``(B, 1, H, W)`` pixel weights in ``[0, 1]`` (e.g. the silhouette m1,
            detached inside): the pixel average becomes ``Σ r d / Σ r`` with ``r`` area-resized to
            each layer. Why: with a whole-crop mean, a render whose appearance differs from the real
            object scores better the smaller it is (fewer differing pixels), which drives the pose
            away; a mean over the silhouette has no such size bias (RESULTS.md, self-supervised).

    Returns:
        scalar tensor.
    """
    if len(feats_a) != len(feats_b) or len(feats_a) == 0:
        raise ValueError(f"perceptual_distance: got {len(feats_a)} and {len(feats_b)} layers")
    per_layer = []
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        if fa.shape != fb.shape or fa.dim() != 4:
            raise ValueError(f"perceptual_distance: layer {i} shapes {tuple(fa.shape)} vs {tuple(fb.shape)}")
        d = (_unit_normalise(fa) - _unit_normalise(fb)).pow(2).sum(dim=1)  # (B, H, W)
        if region is None:
            per_layer.append(d.flatten(1).mean(dim=1))
        else:
            r = torch.nn.functional.adaptive_avg_pool2d(region.detach().to(d.dtype), d.shape[-2:])[:, 0]
            per_layer.append((r * d).flatten(1).sum(dim=1) / r.flatten(1).sum(dim=1).clamp_min(1e-6))
    per_sample = torch.stack(per_layer, dim=0).mean(dim=0)
    return _weighted_mean(per_sample, weight)


def mask_blend(x: torch.Tensor, m: torch.Tensor, background: torch.Tensor | float = 0.5) -> torch.Tensor:
    """Silhouette masking ``M(x, m) = m·x + (1 − m)·b`` (Sec. 3.2, "Silhouette masking").

    Differentiable in ``m``: this is the path by which L_pose and L_pose2 reach the renderer.

    Args:
        x: ``(B, 3, H, W)`` image.
        m: ``(B, 1, H, W)`` soft silhouette in ``[0, 1]``.
        background: a float, or a tensor broadcastable to ``(B, 3, H, W)``.
    """
    check_shape(x, ("B", 3, "H", "W"), "x")
    check_shape(m, ("B", 1, "H", "W"), "m")
    return m * x + (1.0 - m) * background


def box_consistency(
    h: torch.Tensor,
    pose_box: torch.Tensor,
    det_box: torch.Tensor,
    delta: float = 0.02,
    weight: Optional[torch.Tensor] = None,
    axis_tolerance: float = 0.85,
) -> torch.Tensor:
    """L_box (ours, not in the paper): the detection box pins the 2D scale and position of ``h``.

    Render-and-compare on a masked image has a trivial minimum: a pose far away renders nothing,
    and "nothing" matches the masked real image (RESULTS.md, self-supervised diagnosis). The
    detection box that cropped the real image fixes the object's apparent size, so ``h`` is pulled
    towards its own similarity transform that maps ``pose_box`` (the 2D extent of the object at
    the pose from ``h``) onto ``det_box``: ``target = c_pose + shift + s (h − c_pose)``, detached.

    Occlusion makes the visible box smaller along one axis, so the scale is the larger of the two
    per-axis ratios ``s = max(w_det / w_pose, h_det / h_pose)``, and the centre shift is applied
    only along axes whose ratio is within ``axis_tolerance`` of ``s`` (not truncated).

    Args:
        h: ``(B, K, 2)`` predicted keypoints, normalised crop coordinates.
        pose_box: ``(B, 4)`` ``(x0, y0, x1, y1)`` extent of the object at the pose from ``h``,
            same units (detached inside).
        det_box: ``(B, 4)`` detection box in the same units.
        delta: Huber transition.
        weight: optional ``(B,)``.

    Returns:
        scalar tensor.
    """
    check_shape(h, ("B", "K", 2), "h")
    check_shape(pose_box, ("B", 4), "pose_box")
    check_shape(det_box, ("B", 4), "det_box")
    with torch.no_grad():
        pose_box, det_box = pose_box.to(h.dtype), det_box.to(h.dtype)
        size_pose = (pose_box[:, 2:] - pose_box[:, :2]).clamp_min(1e-6)
        size_det = (det_box[:, 2:] - det_box[:, :2]).clamp_min(1e-6)
        ratio = size_det / size_pose  # (B, 2)
        scale = ratio.amax(dim=1, keepdim=True)  # (B, 1)
        untruncated = (ratio >= axis_tolerance * scale).to(h.dtype)
        c_pose = (pose_box[:, :2] + pose_box[:, 2:]) / 2
        c_det = (det_box[:, :2] + det_box[:, 2:]) / 2
        centre = c_pose + untruncated * (c_det - c_pose)
        target = centre[:, None, :] + scale[:, :, None] * (h.detach() - c_pose[:, None, :])
    return huber(h, target, delta, weight)


def total_loss(losses: Dict[str, torch.Tensor], weights: LossWeights = LossWeights()) -> torch.Tensor:
    """Eq. 3: ``λ1 L_pose + λ2 L_pose2 + λ3 L_sup + λ4 L_percep`` (+ ``λ_box L_box`` and
    ``λ_refine L_refine``, ours) over the terms present.

    ``losses`` maps ``"pose"``, ``"pose2"``, ``"sup"``, ``"percep"``, ``"box"``, ``"refine"`` to scalars; missing keys are
    switched-off components. Unknown keys raise, so a typo cannot silently drop a term.
    """
    lam = {"pose": weights.pose, "pose2": weights.pose2, "sup": weights.sup, "percep": weights.percep,
           "box": weights.box, "refine": weights.refine}
    unknown = set(losses) - set(lam)
    if unknown:
        raise KeyError(f"total_loss: unknown loss names {sorted(unknown)}")
    if not losses:
        raise ValueError("total_loss: no loss terms")
    return sum(lam[k] * v for k, v in losses.items())
