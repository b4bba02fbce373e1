"""CRD: contrastive relational distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.1)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import kl_rows, relation_loss
from clipdistill.losses.registry import register


@register("crd")
class CRDLoss(nn.Module):
    """Match the student's image–text similarity distribution to the teacher's.

    loss = ½[KL(σ(τ_t t_v t_tᵀ/T) ‖ σ(τ_s ŝ⁰_v ŝ⁰_tᵀ/T)) + KL(σ(τ_t t_t t_vᵀ/T) ‖ σ(τ_s ŝ⁰_t ŝ⁰_vᵀ/T))]·T²

    σ is a row softmax over the N candidates of the batch, KL is averaged over rows, ŝ⁰ is the
    normalized student embedding (no projection: only similarities are compared, so D_s ≠ D_t is fine).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized. The reference weight is 1.

    Args:
        temperature: KD temperature T (CLIP-KD uses 1). The T² factor keeps gradient magnitudes
            comparable across temperatures (Hinton et al. 2015).
    """

    needs_teacher = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        return relation_loss(student, teacher, kl_rows, student_scale=student.logit_scale,
                             teacher_scale=teacher.logit_scale, temperature=self.temperature)
