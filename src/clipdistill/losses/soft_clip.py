"""soft_clip: open_clip's DistillClipLoss distillation term."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import relation_loss, soft_cross_entropy, teacher_temperature
from clipdistill.losses.registry import register


@register("soft_clip")
class SoftClipLoss(nn.Module):
    """Soft cross-entropy from the teacher's similarity distribution to the student's.

    loss = ½[H(σ(τ_t t_v t_tᵀ/T), σ(τ_s ŝ⁰_v ŝ⁰_tᵀ/T)) + H(same for text rows)]·T²,
    H(p, q) = −Σ_j p_j log q_j averaged over rows, ŝ⁰ = normalized student embedding.

    This is ``open_clip.DistillClipLoss``'s ``distill_loss`` (its contrastive half is our ``clip``
    term): at T = 1 the values are identical (tested). It differs from ``crd`` only by the teacher's
    entropy, a constant, so gradients agree; the logged value does not go to 0.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Scales: the student side uses the student's own τ_s; the teacher side the teacher's own τ_t
    (``teacher.logit_scale``) unless ``teacher_scale`` is given (set it for a sigmoid-trained teacher).

    Args:
        temperature: KD temperature T; the T² factor (absent in open_clip, equal to 1 at T = 1) keeps
            gradient magnitudes comparable across temperatures.
        teacher_scale: replaces τ_t (None: the teacher's own).
    """

    needs_teacher = True
    one_for_all_teachers = True  # the student side is the same for every teacher: one term against the ensemble's target

    def __init__(self, temperature: float = 1.0, teacher_scale: float | None = None):
        super().__init__()
        self.temperature, self.teacher_scale = temperature, teacher_scale

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        return relation_loss(student, teacher, soft_cross_entropy, student_scale=student.logit_scale,
                             teacher_scale=partial(teacher_temperature, self.teacher_scale),
                             temperature=self.temperature)
