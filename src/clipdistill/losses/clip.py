"""The student's own CLIP contrastive (task) loss."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import symmetric_infonce
from clipdistill.losses.registry import register


@register("clip")
class ClipLoss(nn.Module):
    """InfoNCE of the student on its own image–text pairs (Radford et al. 2021; open_clip's ClipLoss).

    loss = ½[CE(τ_s ŝ⁰_v ŝ⁰_tᵀ) + CE(τ_s ŝ⁰_t ŝ⁰_vᵀ)], ŝ⁰ = normalize(raw student embedding),
    τ_s = student.logit_scale (already exponentiated). Shapes: student.image/text (N, D_s).
    The teacher is ignored (it may be None), so this is also the no-distillation baseline.
    """

    needs_teacher = False

    def forward(self, student: Embeddings, teacher: Embeddings | None = None) -> torch.Tensor:
        return symmetric_infonce(student.unit("image"), student.unit("text"), student.logit_scale, student.rows)
