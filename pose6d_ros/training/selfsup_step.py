"""One self-supervised step of Sec. 3.2 (docs/method.md, steps 1-10), as a callable for the trainer.

    h1 = Φ(x_r)                      1
    y1 = P(h1, K_crop)               2   gradient to h1 (implicit function theorem)
    r1, m1 = R(y1)                   3   gradient to y1
    x_m = M(x_r, m1)                 4   gradient to m1
    h2 = Φ(x_m), h3 = Φ(r1)          5
    L_pose, L_pose2, L_sup, L_percep 6-9
    L = Σ λ_i L_i                    10  (Eq. 3)

Occlusion augmentation: one set of noise patches per step goes on ``x_r`` (before h1) and on
``r1``; the patched part of ``m1`` is set to 0, so ``x_m`` never contains noise.

Every component has a switch (``selfsup`` recipe keys, ``config.SelfSupSection``) for the ablations.
Samples whose PnP failed, whose ``y1`` leaves the valid depth range, or whose PnP residual is
large get weight 0 in every per-sample loss (their pose is replaced by a detached safe pose so
no NaN can reach the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Literal, Mapping, Optional, Tuple

import torch
from torch import nn

from pose6d_ros._checks import check_shape
from pose6d_ros.geometry.camera import normalized_to_pixels, pixels_to_normalized
from pose6d_ros.geometry.keypoints import project_points
from pose6d_ros.training import losses as L
from pose6d_ros.training.schema import build_section
from pose6d_ros.training.trainer import StepOutput

__all__ = ["SelfSupSettings", "SelfSupStep", "RenderFn", "PnPFn", "OcclusionFn", "draw_keypoints", "refine_pose"]

#: ``render_fn(object_index (B,), R (B,3,3), t (B,3), K_crop (B,3,3), size) -> object with
#: ``.rgb (B,3,S,S)`` composited over black (``RenderSettings.background = 0``, i.e. premultiplied by
#: the silhouette) and ``.silhouette (B,1,S,S)``, differentiable in R and t.
RenderFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], Any]
#: ``pnp_fn(points_2d (B,N,2) px, points_3d (B,N,3), K (B,3,3)) -> PnPResult``.
PnPFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]
#: ``occlusion_fn(B, S, device) -> (B,1,S,S)`` patch mask in {0, 1} (1 = noise patch).
OcclusionFn = Callable[[int, int, torch.device], torch.Tensor]


@dataclass(frozen=True)
class SelfSupSettings:
    """What one step needs of the ``selfsup`` recipe section (the whole section is
    :class:`pose6d_ros.training.config.SelfSupSection`, which adds the renderer, the perceptual
    features, the occlusion patches and the EMA teacher). Defaults follow the paper where it speaks."""

    weights: L.LossWeights = L.LossWeights()
    huber_delta: float = 0.02
    use_pose: bool = True
    use_pose2: bool = True
    use_sup_render: bool = True
    use_sup_synthetic: bool = True
    use_percep: bool = True
    use_mask: bool = True
    use_occlusion: bool = True
    # ours: L_box pins h1's 2D scale/position to the detection box (losses.box_consistency)
    use_box: bool = False
    box_huber_delta: Optional[float] = None  # L_box's Huber transition; None = huber_delta
    # ours: "crop" = L_percep averaged over the crop (paper); "silhouette" = over m1 (no size bias)
    percep_region: Literal["crop", "silhouette"] = "crop"
    # ours: render-and-compare pseudo-labels. Each unlabeled crop's pose y1 is refined by
    # ``refine_steps`` Adam steps on L_percep over the pose alone (no Φ in the loop), cached per
    # crop and recomputed every ``refine_period`` steps; L_refine = Huber(h1, π(refined pose)).
    refine_steps: int = 0
    refine_lr: float = 0.002
    refine_period: int = 50
    background: Literal["constant", "noise"] = "constant"
    background_value: float = 0.5
    grad_through_mask: bool = True
    grad_through_render_rgb: bool = True  # the composited render r1 carries gradient to y1
    grad_through_pnp: bool = True
    detach_h2_in_pose2: bool = False
    # Eq. 2's render term labels r1 with sg[π(y1)]: a label, not a path to y1 (docs/method.md, step 8).
    # True: that term sees Φ(sg[r1]), so it trains Φ only; False: it shares h3 = Φ(r1) with Eq. 1.
    sup_render_detached: bool = True
    reject_failed_pnp: bool = True
    depth_range: Tuple[float, float] = (0.1, 3.0)
    max_reproj_error_px: float = 10.0
    fuse_forward: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], prefix: str = "selfsup") -> "SelfSupSettings":
        """From a mapping of this class's keys, checked as a recipe section (``schema.build_section``):
        an unknown key or a wrong type is a one-line ``RecipeError`` naming ``prefix.key``."""
        return build_section(cls, cfg, prefix)


class SelfSupStep:
    """The step function (``step_fn(trainer, batch) -> StepOutput``).

    Args:
        settings: switches and weights.
        keypoints_3d: ``(N_obj, K, 3)`` model-frame keypoints in metres, row = object index.
        render_fn: the differentiable renderer, see :data:`RenderFn`.
        pnp_fn: the differentiable PnP, see :data:`PnPFn`.
        perceptual: frozen feature extractor ``images -> list of features`` (needed if
            ``use_percep``).
        occlusion_fn: patch sampler (needed if ``use_occlusion``), see :data:`OcclusionFn`.
        extent_points: ``(N_obj, P, 3)`` points whose projection spans the object's 2D box
            (needed if ``use_box``; e.g. ``RunObjects.extent_points``).

    Batch: a dict with
        - ``"real"``: ``{"image": (B,3,S,S), "K": (B,3,3) crop intrinsics, "object_index": (B,)}``,
          plus ``"box": (B,4)`` the detection box in crop pixels when ``use_box``
        - ``"synthetic"`` (if ``use_sup_synthetic``): ``{"image": (Bg,3,S,S), "keypoints":
          (Bg,K,2) normalised, "object_index": (Bg,)}``
    """

    def __init__(
        self,
        *,
        settings: SelfSupSettings,
        keypoints_3d: torch.Tensor,
        render_fn: RenderFn,
        pnp_fn: PnPFn,
        perceptual: Optional[nn.Module] = None,
        occlusion_fn: Optional[OcclusionFn] = None,
        extent_points: Optional[torch.Tensor] = None,
    ) -> None:
        check_shape(keypoints_3d, ("N", "K", 3), "keypoints_3d")
        if settings.use_percep and perceptual is None:
            raise ValueError("SelfSupStep: use_percep needs a perceptual feature extractor")
        if settings.use_occlusion and occlusion_fn is None:
            raise ValueError("SelfSupStep: use_occlusion needs an occlusion_fn")
        if settings.percep_region not in ("crop", "silhouette"):
            raise ValueError(f"selfsup.percep_region must be 'crop' or 'silhouette', got {settings.percep_region!r}")
        if settings.use_box and extent_points is None:
            raise ValueError("SelfSupStep: use_box needs extent_points")
        if extent_points is not None:
            check_shape(extent_points, ("N", "P", 3), "extent_points")
        if not (settings.use_pose or settings.use_pose2 or settings.use_sup_render
                or settings.use_sup_synthetic or settings.use_percep or settings.use_box):
            raise ValueError("SelfSupStep: every loss term is switched off")
        self.s = settings
        self.keypoints_3d = keypoints_3d
        self.render_fn = render_fn
        self.pnp_fn = pnp_fn
        self.perceptual = perceptual
        self.occlusion_fn = occlusion_fn
        self.extent_points = extent_points
        # per-crop cache of refined poses (L_refine), indexed by batch["real"]["index"]
        self._ref_step = torch.empty(0, dtype=torch.long)
        self._ref_R = torch.empty(0, 3, 3)
        self._ref_t = torch.empty(0, 3)

    def _background(self, like: torch.Tensor) -> torch.Tensor | float:
        if self.s.background == "constant":
            return float(self.s.background_value)
        if self.s.background == "noise":
            # one noise image per sample, shared by x_m and r1 so they stay comparable
            return torch.rand_like(like)
        raise ValueError(f"selfsup.background must be 'constant' or 'noise', got {self.s.background!r}")

    def __call__(self, trainer, batch: Dict[str, Dict[str, torch.Tensor]]) -> StepOutput:
        s = self.s
        model = trainer.model
        real = batch["real"]
        x_r, K, obj = real["image"], real["K"], real["object_index"]
        check_shape(x_r, ("B", 3, "S", "S"), "real.image")
        check_shape(K, ("B", 3, 3), "real.K")
        B, S = x_r.shape[0], x_r.shape[-1]
        kp3 = self.keypoints_3d.to(device=x_r.device, dtype=torch.float32)[obj]  # (B, K, 3)

        x_clean = x_r
        occ = None
        if s.use_occlusion:
            occ = self.occlusion_fn(B, S, x_r.device).to(x_r.dtype)
            noise = (0.5 + 0.25 * torch.randn_like(x_r)).clamp(0, 1)
            x_r = occ * noise + (1 - occ) * x_r

        # 1. h1 (an EMA teacher, when configured, gives the pose; the student still gives h1 for L_pose2)
        h1 = model(x_r, obj)
        teacher = trainer.state.get("teacher")
        h1_pose = teacher(x_r, obj).detach() if teacher is not None else h1

        with torch.autocast(x_r.device.type, enabled=False):
            # 2. y1 = P(h1)
            uv1 = normalized_to_pixels(h1_pose.float(), S)
            if not s.grad_through_pnp:
                uv1 = uv1.detach()
            pnp = self.pnp_fn(uv1, kp3, K.float())
            R1, t1 = pnp.R, pnp.t
            valid = torch.isfinite(R1).flatten(1).all(1) & torch.isfinite(t1).all(1)
            # L_box keeps pulling samples that left the depth range / residual bound back: only a
            # failed or non-finite PnP has no pose to measure
            solved = valid & ~pnp.failed
            R_solved = torch.where(solved[:, None, None], R1, torch.eye(3, dtype=R1.dtype, device=R1.device)).detach()
            t_solved = torch.where(solved[:, None], t1, t1.new_tensor([0.0, 0.0, 1.0])).detach()
            if s.reject_failed_pnp:
                valid &= ~pnp.failed
                valid &= (t1[:, 2] > s.depth_range[0]) & (t1[:, 2] < s.depth_range[1])
                valid &= pnp.reprojection_error < s.max_reproj_error_px
            safe_R = torch.eye(3, device=R1.device, dtype=R1.dtype).expand_as(R1)
            safe_t = torch.tensor([0.0, 0.0, 1.0], device=t1.device, dtype=t1.dtype).expand_as(t1)
            R1 = torch.where(valid[:, None, None], R1, safe_R.detach())
            t1 = torch.where(valid[:, None], t1, safe_t.detach())
            safe_K = K.new_tensor([[S, 0.0, S / 2 - 0.5], [0.0, S, S / 2 - 0.5], [0.0, 0.0, 1.0]]).float()
            Kf = torch.where(valid[:, None, None], K.float(), safe_K.expand(B, 3, 3))
            # 3. r1, m1 = R(y1)
            rend = self.render_fn(obj, R1, t1, Kf, S)
            rgb, m1 = rend.rgb.to(x_r.dtype), rend.silhouette.to(x_r.dtype)
            h3_label = pixels_to_normalized(project_points(kp3, R1, t1, Kf), S).detach()
            pose_box = None
            if s.use_box:
                if "box" not in real:
                    raise KeyError("SelfSupStep: use_box needs batch['real']['box'] (detection box, crop px)")
                pts = self.extent_points.to(device=x_r.device, dtype=torch.float32)[obj]
                ext = project_points(pts, R_solved, t_solved, K.float())  # (B, P, 2) px
                pose_box = pixels_to_normalized(torch.stack((ext.amin(1), ext.amax(1)), 1), S).reshape(B, 4)
                det_box = pixels_to_normalized(real["box"].float().reshape(B, 2, 2), S).reshape(B, 4)
        m_mask = m1 if s.grad_through_mask else m1.detach()
        b = self._background(x_r)
        r1 = rgb + (1.0 - m1) * b  # the render (composited over black) moved onto x_m's background
        if not s.grad_through_render_rgb:
            r1 = r1.detach()
        if occ is not None:
            r1 = occ * noise + (1 - occ) * r1
            m_mask = m_mask * (1 - occ)
        # 4. x_m = M(x_r, m1)
        x_m = L.mask_blend(x_r, m_mask, b) if s.use_mask else x_r

        # 5. h2, h3 (and Φ(x_g)) in one forward when asked: same weights, fewer kernel launches
        syn = batch.get("synthetic") if s.use_sup_synthetic else None
        need_h3 = s.use_pose or (s.use_sup_render and not s.sup_render_detached)
        need_h2 = s.use_pose or s.use_pose2
        inputs, objs, names = [], [], []
        if need_h2:
            inputs.append(x_m), objs.append(obj), names.append("h2")
        if need_h3:
            inputs.append(r1), objs.append(obj), names.append("h3")
        if s.use_sup_render and s.sup_render_detached:
            inputs.append(r1.detach()), objs.append(obj), names.append("h3_sup")
        if syn is not None:
            inputs.append(syn["image"]), objs.append(syn["object_index"]), names.append("hg")
        outs: Dict[str, torch.Tensor] = {}
        if inputs:
            if s.fuse_forward:
                pred = model(torch.cat(inputs), torch.cat(objs))
                outs = dict(zip(names, pred.split([x.shape[0] for x in inputs])))
            else:
                outs = {n: model(x, o) for n, x, o in zip(names, inputs, objs)}

        w = valid.to(h1.dtype)
        parts: Dict[str, torch.Tensor] = {}
        d = s.huber_delta
        if s.use_pose:
            parts["pose"] = L.pose_consistency(outs["h2"], outs["h3"], d, w)  # Eq. 1
        if s.use_pose2:
            h2 = outs["h2"].detach() if s.detach_h2_in_pose2 else outs["h2"]
            parts["pose2"] = L.pose_consistency2(h1, h2, d, w)
        if s.use_sup_render or syn is not None:  # Eq. 2
            parts["sup"] = L.synthetic_supervision(
                outs.get("h3_sup", outs.get("h3")) if s.use_sup_render else None,
                h3_label if s.use_sup_render else None,
                outs.get("hg"), syn["keypoints"] if syn is not None else None, d, w)
        if s.refine_steps > 0:
            parts["refine"] = self._refine_loss(trainer, real, x_clean, h1, R_solved, t_solved, solved, kp3, K.float())
        if pose_box is not None:
            d_box = s.box_huber_delta if s.box_huber_delta is not None else d
            parts["box"] = L.box_consistency(h1, pose_box, det_box, d_box, solved.to(h1.dtype))
        if s.use_percep:
            region = m1 if s.percep_region == "silhouette" else None
            parts["percep"] = L.perceptual_distance(self.perceptual(r1), self.perceptual(x_m), w, region)
        total = L.total_loss(parts, s.weights)  # Eq. 3
        losses = {**parts, "total": total}

        metrics = {
            "valid_frac": float(valid.float().mean()),
            "depth_mean": float(t1.detach()[valid, 2].mean()) if bool(valid.any()) else float("nan"),
            "mask_mean": float(m1.detach().mean()),
        }
        images = {
            "real": x_r.detach(),
            "masked_real": x_m.detach(),
            "rendered": r1.detach(),
            "keypoints": draw_keypoints(x_r.detach(), h1.detach()),
        }
        return StepOutput(losses=losses, metrics=metrics, images=images)

    def _refine_loss(self, trainer, real, x_clean, h1, R1, t1, solved, kp3, K) -> torch.Tensor:
        """L_refine (ours): Huber between h1 and the keypoints of the crop's cached refined pose."""
        s = self.s
        if "index" not in real:
            raise KeyError("SelfSupStep: refine_steps > 0 needs batch['real']['index'] (crop ids)")
        if self.perceptual is None:
            raise ValueError("SelfSupStep: refine_steps > 0 needs the perceptual feature extractor")
        dev = h1.device
        index = real["index"].to(dev).long()
        need = int(index.max()) + 1
        if self._ref_step.numel() < need:  # grow the per-crop cache (step -1 = never refined)
            grow = need - self._ref_step.numel()
            self._ref_step = torch.cat((self._ref_step.to(dev), torch.full((grow,), -1, dtype=torch.long, device=dev)))
            self._ref_R = torch.cat((self._ref_R.to(dev), torch.eye(3, device=dev).expand(grow, 3, 3)))
            self._ref_t = torch.cat((self._ref_t.to(dev), torch.zeros(grow, 3, device=dev)))
        step = int(getattr(trainer, "step", 0))
        last = self._ref_step[index]
        stale = solved & ((last < 0) | (step - last >= s.refine_period))
        if bool(stale.any()):
            R, t = refine_pose(self.render_fn, self.perceptual, real["object_index"].to(dev)[stale], R1[stale], t1[stale],
                               K[stale], x_clean[stale].float(), s.refine_steps, s.refine_lr, s.background_value,
                               s.percep_region == "silhouette")
            self._ref_R[index[stale]], self._ref_t[index[stale]] = R, t
            self._ref_step[index[stale]] = step
        have = self._ref_step[index] >= 0
        target = pixels_to_normalized(project_points(kp3, self._ref_R[index], self._ref_t[index], K), x_clean.shape[-1])
        return L.huber(h1, target.detach().to(h1.dtype), s.huber_delta, have.to(h1.dtype))


def refine_pose(render_fn: RenderFn, perceptual: nn.Module, object_index: torch.Tensor, R0: torch.Tensor,
                t0: torch.Tensor, K: torch.Tensor, image: torch.Tensor, steps: int, lr: float = 0.002,
                background: float = 0.5, silhouette_region: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render-and-compare on the pose alone: ``steps`` Adam steps on L_percep(r(y), M(x, m(y))) over a
    rotation increment (axis-angle, left-multiplied) and a translation increment in units of depth.

    Returns the refined ``(R, t)``, detached. ``benchmarks/selfsup_lm_lite.py --basin`` measures
    how far this corrects a pose (RESULTS.md).
    """
    R0, t0 = R0.detach().float(), t0.detach().float()
    n = R0.shape[0]
    w = torch.zeros(n, 3, device=R0.device, requires_grad=True)
    dt = torch.zeros(n, 3, device=R0.device, requires_grad=True)
    opt = torch.optim.Adam([w, dt], lr=lr)

    def pose():
        z = torch.zeros_like(w[:, 0])
        skew = torch.stack((z, -w[:, 2], w[:, 1], w[:, 2], z, -w[:, 0], -w[:, 1], w[:, 0], z), 1).view(n, 3, 3)
        return torch.linalg.matrix_exp(skew) @ R0, t0 + dt * t0[:, 2:3]

    with torch.enable_grad():
        for _ in range(steps):
            R, t = pose()
            r = render_fn(object_index, R, t, K, image.shape[-1])
            m = r.silhouette.float()
            rendered = r.rgb.float() + (1 - m) * background
            loss = L.perceptual_distance(perceptual(rendered), perceptual(L.mask_blend(image, m, background)),
                                         None, m if silhouette_region else None) * n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        R, t = pose()
    return R.detach(), t.detach()


def draw_keypoints(images: torch.Tensor, keypoints: torch.Tensor, color=(1.0, 0.0, 0.0)) -> torch.Tensor:
    """Images with keypoints drawn as single coloured pixels (TensorBoard panels).

    Args:
        images: ``(B, 3, S, S)``.
        keypoints: ``(B, K, 2)`` normalised crop coordinates.
    """
    B, _, H, W = images.shape
    out = images.clone()
    uv = normalized_to_pixels(keypoints.float(), (H, W)).round().long()
    u, v = uv[..., 0].clamp(0, W - 1), uv[..., 1].clamp(0, H - 1)
    b = torch.arange(B, device=images.device)[:, None].expand_as(u)
    col = torch.tensor(color, device=images.device, dtype=images.dtype)
    out.permute(0, 2, 3, 1)[b, v, u] = col
    return out
