"""afd: augmented feature distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import clamp_log_scale_, learnable_log_scale, symmetric_infonce
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


@register("afd")
class AFDLoss(nn.Module):
    """Fuse each student embedding with the teacher's and train the fused features contrastively.

    f_v = normalize(W_v [ŝ_v ; t_v]),  f_t = normalize(W_t [ŝ_t ; t_t]),  W: 2·D_t → D_t
    loss = ½[CE(ρ f_v f_tᵀ) + CE(ρ f_t f_vᵀ)],  ρ learnable (init 1/0.07, ≤ 100)

    ŝ = normalize(P(s)) with a head per tower when D_s ≠ D_t, so this works for any student width
    (the reference code crashes when the widths differ, and its AFD script actually runs CRD).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        student_dim, teacher_dim: widths; ``teacher_dim`` is required (it sizes the fusion layers).
        always_project: head even when D_s == D_t. init_scale, max_scale: ρ's start and ceiling.
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, init_scale: float = 1 / 0.07, max_scale: float = 100.0):
        super().__init__()
        if teacher_dim is None:
            raise ValueError("afd needs teacher_dim= (and student_dim= when it differs) to size its fusion layers")
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.fuse_image = nn.Linear(2 * teacher_dim, teacher_dim)
        self.fuse_text = nn.Linear(2 * teacher_dim, teacher_dim)
        self.log_scale = learnable_log_scale(init_scale)
        self.max_scale = max_scale
        self.clamp_()  # an init above the cap starts at the cap

    def clamp_(self) -> None:
        """ρ ≤ max_scale, in place (the objective calls this after every optimizer step)."""
        clamp_log_scale_(self.log_scale, self.max_scale)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        fused_image = F.normalize(self.fuse_image(torch.cat([image, teacher.image], dim=1)), dim=-1)
        fused_text = F.normalize(self.fuse_text(torch.cat([text, teacher.text], dim=1)), dim=-1)
        rho = self.log_scale.exp()  # kept ≤ max_scale by clamp_() after each step
        return symmetric_infonce(fused_image, fused_text, rho, student.rows)
