"""FD: feature distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.2)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


@register("fd")
class FDLoss(nn.Module):
    """Pull each projected student embedding onto the teacher's.

    loss = mean_i ‖ŝ_v,i − t_v,i‖² + ‖ŝ_t,i − t_t,i‖²,  ŝ = normalize(P(s))

    The squared distance is *summed* over dimensions (so the right weight does not depend on D) and
    averaged over samples. The reference code takes the element mean and multiplies by 2000 at D = 512,
    which equals a weight of 2000/512 ≈ 3.9 here. Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        student_dim, teacher_dim: learn a linear head P per tower when they differ.
        always_project: learn P even when the dims agree.
    """

    needs_teacher = True
    needs_text = False  # caption-free data: text is (N, 0) and the image half is the whole loss

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        rows = student.rows  # a per-sample loss: local_loss mode needs only this rank's rows
        if rows != slice(None):
            student = student.with_(image=student.image[rows], text=student.text[rows])
            teacher = teacher.with_(image=teacher.image[rows], text=teacher.text[rows])
        image, text = self.project(student, teacher)
        image_term = (image - teacher.image).pow(2).sum(dim=1)
        text_term = (text - teacher.text).pow(2).sum(dim=1)
        return (image_term + text_term).mean()
