"""Projection of student embeddings into the teacher's space, owned by the loss that needs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings


class TeacherSpaceProjection(nn.Module):
    """ŝ = norm(P(s)) for each tower, with one linear map per tower.

    CLIP-KD learns a head only when the student's and teacher's dimensions differ; ``always=True``
    learns one even when they agree. Without dimensions (``student_dim=None``) there is no head and the
    dimensions must agree at call time.

    Args:
        student_dim, teacher_dim: embedding widths D_s, D_t.
        always: learn a head even when D_s == D_t.
    """

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, always: bool = False):
        super().__init__()
        self.image = self.text = None
        if student_dim is not None and teacher_dim is not None and (always or student_dim != teacher_dim):
            self.image = nn.Linear(student_dim, teacher_dim)
            self.text = nn.Linear(student_dim, teacher_dim)

    def forward(self, student: Embeddings, teacher: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns normalized projected (image, text), each (N, D_t)."""
        image, text = student.image, student.text
        if self.image is not None:
            # Caption-free data: text is (N, 0) on both sides and stays so (fd's text half is then 0).
            image, text = self.image(image), self.text(text) if text.shape[1] else text
        elif student.dim != teacher.dim:
            raise ValueError(f"student dim {student.dim} != teacher dim {teacher.dim}: build the loss with "
                             "student_dim= and teacher_dim= so it learns a projection head")
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)
