"""Distillation losses of Sec. 3.3-3.4: upper-bounded KD (Eq. 5), hint training (Eq. 6), KD* (Eq. 7).

Conventions:
- keypoints ``h`` are ``(B, K, 2)`` in normalised crop coordinates (``docs/conventions.md``); the
  squared norm ``‖a − b‖²`` of the paper is the sum over the ``K × 2`` coordinates of one sample;
- every loss here returns one value per sample, ``(B,)``; the trainer averages (:func:`masked_mean`);
- the teacher's outputs and features are targets: no gradient reaches a teacher (they are frozen), and
  Eq. 5's choice of branch is a comparison, which carries no gradient either.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pose6d_ros._checks import check_same_batch, check_shape

__all__ = ["squared_error", "kd_upper_bounded", "kd_star", "hint_loss", "masked_mean", "HintAdapters"]


def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``‖a − b‖²`` per sample: ``(B, ...) , (B, ...) -> (B,)``, summed over all but the batch dim."""
    return (a - b).pow(2).flatten(1).sum(1)


def _check_keypoints(h_s: torch.Tensor, h_t: torch.Tensor, h_gt: torch.Tensor) -> None:
    check_shape(h_s, ("B", "K", 2), "h_s")
    if h_t.shape != h_s.shape or h_gt.shape != h_s.shape:
        raise ValueError(f"keypoints differ in shape: h_s {tuple(h_s.shape)}, h_t {tuple(h_t.shape)}, "
                         f"h_gt {tuple(h_gt.shape)}")


def kd_upper_bounded(h_s: torch.Tensor, h_t: torch.Tensor, h_gt: torch.Tensor) -> torch.Tensor:
    r"""Upper-bounded KD loss, Eq. 5 (after Chen et al. 2017), per sample.

    .. math::
        L_{KD}(h_s, h_t, h_{gt}) = \begin{cases} \|h_s - h_{gt}\|^2 & \text{if } \|h_s - h_{gt}\|^2 <
        \|h_t - h_{gt}\|^2 \\ \|h_s - h_t\|^2 + \|h_s - h_{gt}\|^2 & \text{otherwise} \end{cases}

    The teacher term is added only where the student is not yet better than the teacher; the branch
    is chosen per sample.

    Args:
        h_s: ``(B, K, 2)`` student keypoints.
        h_t: ``(B, K, 2)`` teacher keypoints (a target: detached here).
        h_gt: ``(B, K, 2)`` labels.

    Returns:
        ``(B,)`` loss per sample.
    """
    _check_keypoints(h_s, h_t, h_gt)
    h_t = h_t.detach()
    e_s = squared_error(h_s, h_gt)
    e_t = squared_error(h_t, h_gt)
    teacher_term = squared_error(h_s, h_t)
    return e_s + torch.where(e_s.detach() < e_t, torch.zeros_like(teacher_term), teacher_term)


def kd_star(h_s: torch.Tensor, h_t: torch.Tensor, h_gt: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    r"""Self-supervised KD loss, Eq. 7, per sample.

    .. math::
        L_{KD^*}(h_s, h_t, h_{gt}) = \begin{cases} L_{KD}(h_s, h_t, h_{gt}) & \text{if } h \in X^g \\
        \|h_s - h_t\|^2 & \text{otherwise} \end{cases}

    ``X^g`` is the paper's labelled synthetic set; here the branch follows ``labelled`` (a real crop
    with a label, as in the fully supervised setting, takes Eq. 5 too). ``h_gt`` of unlabelled
    samples is never read: it may hold anything, NaN included (it is replaced before any arithmetic,
    so no NaN reaches a gradient).

    Args:
        h_s, h_t, h_gt: ``(B, K, 2)`` student, teacher, label.
        labelled: ``(B,)`` bool, True where ``h_gt`` is a label (synthetic crops).

    Returns:
        ``(B,)`` loss per sample.
    """
    _check_keypoints(h_s, h_t, h_gt)
    check_shape(labelled, ("B",), "labelled")
    check_same_batch(("h_s", h_s), ("labelled", labelled))
    labelled = labelled.to(torch.bool)
    h_t = h_t.detach()
    safe_gt = torch.where(labelled[:, None, None], h_gt, h_t)  # unlabelled rows: any finite stand-in
    return torch.where(labelled, kd_upper_bounded(h_s, h_t, safe_gt), squared_error(h_s, h_t))


def hint_loss(adapted_teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    r"""Hint-training loss, Eq. 6, per sample: :math:`L_{HT} = \|\Psi_t(F_t) - F_s\|^2`.

    Averaged over the ``C × H × W`` values of the map (ours: the paper writes the squared norm; its
    sum would outweigh ``L_KD*`` by about ``C·H·W`` = 8,192 for a ResNet-18 at 64 px). Gradients
    reach both the student features and the adapter Ψ_t.

    Args:
        adapted_teacher: ``(B, C, H, W)`` = Ψ_t(F_t), the teacher's hint through its adapter.
        student: ``(B, C, H, W)`` = F_s, the student's guided layer.

    Returns:
        ``(B,)`` loss per sample.
    """
    check_shape(student, ("B", "C", "H", "W"), "student features")
    if adapted_teacher.shape != student.shape:
        raise ValueError(f"hint_loss: adapted teacher features {tuple(adapted_teacher.shape)} and student "
                         f"features {tuple(student.shape)} differ in shape")
    return (adapted_teacher - student).pow(2).flatten(1).mean(1)


def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of ``values (B,)`` over the samples where ``mask`` is True (all when ``None``); 0 when none
    is (a differentiable zero, so a step still runs)."""
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class HintAdapters(nn.Module):
    r"""The adapters Ψ_t of Eq. 6: one 1×1 convolution per teacher (object), training only.

    Sample ``i`` goes through the adapter of its own teacher, ``object_index[i]``: the same as running
    it through that teacher's ``Conv2d(C_t, C_s, 1)``. The N adapters are stored as one
    ``(N, C_s, C_t)`` weight table and ``(N, C_s)`` biases. They live beside the student in training
    (:class:`pose6d_ros.training.distill.DistillModel`) and are never part of the exported network.

    Args:
        num_teachers: N, one adapter per object (model row).
        teacher_channels: C_t of the teachers' hint layer.
        student_channels: C_s of the student's guided layer.

    Initialisation (ours): identity with zero bias when ``C_t == C_s`` (identical architectures, as in
    the paper's supplementary 1.2), so training starts from plain feature matching; otherwise
    ``nn.Conv2d``'s default.

    Shape:
        - features: ``(B, C_t, H, W)`` teacher hints
        - object_index: ``(B,)`` long in ``[0, N)``
        - output: ``(B, C_s, H, W)``
    """

    def __init__(self, num_teachers: int, teacher_channels: int, student_channels: int) -> None:
        super().__init__()
        if num_teachers < 1 or teacher_channels < 1 or student_channels < 1:
            raise ValueError(f"HintAdapters: need positive sizes, got {num_teachers}, {teacher_channels}, "
                             f"{student_channels}")
        self.num_teachers = num_teachers
        self.teacher_channels, self.student_channels = teacher_channels, student_channels
        weight = torch.empty(num_teachers, student_channels, teacher_channels)
        bias = torch.zeros(num_teachers, student_channels)
        if teacher_channels == student_channels:
            weight.copy_(torch.eye(student_channels).expand_as(weight))
        else:
            for n in range(num_teachers):  # nn.Conv2d's own initialisation, one adapter at a time
                conv = nn.Conv2d(teacher_channels, student_channels, 1)
                weight[n].copy_(conv.weight[:, :, 0, 0].detach())
                bias[n].copy_(conv.bias.detach())
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, features: torch.Tensor, object_index: torch.Tensor) -> torch.Tensor:
        check_shape(features, ("B", self.teacher_channels, "H", "W"), "teacher features")
        check_shape(object_index, ("B",), "object_index")
        check_same_batch(("teacher features", features), ("object_index", object_index))
        B, _, H, W = features.shape
        # Samples sorted by teacher, one matrix product per teacher present (at most N): gathering a
        # (C_s, C_t) weight per sample instead cost 7x more at B = 32, C = 576 (0.15 s vs 0.02 s per
        # forward + backward + Adam step on one core).
        order = torch.argsort(object_index, stable=True)
        counts = torch.bincount(object_index, minlength=self.num_teachers).tolist()
        chunks = torch.split(features.reshape(B, self.teacher_channels, H * W)[order], counts)
        out = torch.cat([torch.matmul(self.weight[n].to(features.dtype), x) + self.bias[n].to(features.dtype)[:, None]
                         for n, x in enumerate(chunks) if len(x)])
        return out[torch.argsort(order)].reshape(B, self.student_channels, H, W)

    def extra_repr(self) -> str:
        return f"num_teachers={self.num_teachers}, {self.teacher_channels} -> {self.student_channels}, 1x1"
