"""CRD: contrastive relational distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.1)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import kl_rows, relation_loss, teacher_temperature
from clipdistill.losses.registry import register


@register("crd")
class CRDLoss(nn.Module):
    """Match the student's image–text similarity distribution to the teacher's.

    loss = ½[KL(σ(τ_t t_v t_tᵀ/T) ‖ σ(τ_s ŝ⁰_v ŝ⁰_tᵀ/T)) + KL(σ(τ_t t_t t_vᵀ/T) ‖ σ(τ_s ŝ⁰_t ŝ⁰_vᵀ/T))]·T²

    σ is a row softmax over the N candidates of the batch, KL is averaged over rows, ŝ⁰ is the
    normalized student embedding (no projection: only similarities are compared, so D_s ≠ D_t is fine).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized. The reference weight is 1.

    Scales: the student side uses the student's own τ_s; the teacher side the teacher's own τ_t
    (``teacher.logit_scale``) unless ``teacher_scale`` is given. Set it for a sigmoid-trained teacher
    (SigLIP), whose scale was learned for sigmoids, not as a softmax temperature.

    Args:
        temperature: KD temperature T (CLIP-KD uses 1). The T² factor keeps gradient magnitudes
            comparable across temperatures (Hinton et al. 2015).
        teacher_scale: replaces τ_t (None: the teacher's own).
    """

    needs_teacher = True
    one_for_all_teachers = True  # the student side is the same for every teacher: one term against the ensemble's target

    def __init__(self, temperature: float = 1.0, teacher_scale: float | None = None):
        super().__init__()
        self.temperature, self.teacher_scale = temperature, teacher_scale

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        return relation_loss(student, teacher, kl_rows, student_scale=student.logit_scale,
                             teacher_scale=partial(teacher_temperature, self.teacher_scale),
                             temperature=self.temperature)
