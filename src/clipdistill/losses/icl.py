"""ICL: interactive contrastive learning (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.4)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import clamp_log_scale_, infonce, learnable_log_scale
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


@register("icl")
class ICLLoss(nn.Module):
    """Contrast student anchors against the teacher's embeddings of the other modality.

    loss = ½[CE(κ ŝ_v t_tᵀ) + CE(κ ŝ_t t_vᵀ)],  ŝ = normalize(P(s)),  κ = exp(learnable log-scale)

    The student image must pick out its own caption among the *teacher's* text embeddings and vice
    versa, so the student is pulled into the teacher's space through contrast rather than regression.
    κ starts at 1/0.07 (CLIP's init) and is clamped at 100 like CLIP's own scale.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        student_dim, teacher_dim: learn a linear head P per tower when they differ.
        always_project: learn P even when the dims agree.
        init_scale: initial κ. max_scale: upper clamp of κ.
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, init_scale: float = 1 / 0.07, max_scale: float = 100.0):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.log_scale = learnable_log_scale(init_scale)
        self.max_scale = max_scale
        self.clamp_()  # an init above the cap starts at the cap

    def clamp_(self) -> None:
        """κ ≤ max_scale, in place (the objective calls this after every optimizer step)."""
        clamp_log_scale_(self.log_scale, self.max_scale)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        scale = self.log_scale.exp()  # kept ≤ max_scale by clamp_() after each step
        rows = student.rows
        return 0.5 * (infonce(image, teacher.text, scale, rows) + infonce(text, teacher.image, scale, rows))
