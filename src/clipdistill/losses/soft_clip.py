"""soft_clip: open_clip's DistillClipLoss distillation term."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import relation_loss, soft_cross_entropy
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

    Args:
        temperature: KD temperature T; the T² factor (absent in open_clip, equal to 1 at T = 1) keeps
            gradient magnitudes comparable across temperatures.
    """

    needs_teacher = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        return relation_loss(student, teacher, soft_cross_entropy, student_scale=student.logit_scale,
                             teacher_scale=teacher.logit_scale, temperature=self.temperature)
