"""affinity: TinyCLIP's affinity mimicking (Wu et al., ICCV 2023)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import relation_loss, soft_cross_entropy
from clipdistill.losses.registry import register


@register("affinity")
class AffinityLoss(nn.Module):
    """Mimic the teacher's image-to-text and text-to-image affinities under one fixed shared scale.

    loss = ½[H(σ(s t_v t_tᵀ), σ(s ŝ⁰_v ŝ⁰_tᵀ)) + H(σ(s t_t t_vᵀ), σ(s ŝ⁰_t ŝ⁰_vᵀ))]

    Unlike ``soft_clip``, which sharpens each model's distribution with its own learned temperature,
    both affinity matrices use the same constant scale ``s``, so the student is asked to reproduce
    the teacher's geometry rather than the teacher's confidence. H is the soft cross-entropy
    averaged over rows. Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Scales: neither model's own; both sides use ``scale``, unless ``teacher_scale`` is given, which
    then replaces s on the teacher side only (the student side keeps ``scale``).

    Args:
        scale: the shared multiplicative scale s (default 100, CLIP's trained ceiling).
        teacher_scale: the teacher side's scale (None: ``scale``).
    """

    needs_teacher = True
    one_for_all_teachers = True  # the student side is the same for every teacher: one term against the ensemble's target

    def __init__(self, scale: float = 100.0, teacher_scale: float | None = None):
        super().__init__()
        self.scale = scale
        self.teacher_scale = scale if teacher_scale is None else teacher_scale

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        return relation_loss(student, teacher, soft_cross_entropy, student_scale=self.scale,
                             teacher_scale=self.teacher_scale)
