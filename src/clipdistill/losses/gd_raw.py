"""gd_raw: gradient distillation as first tabled (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.3), for the record."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.gd import infonce_gradients
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


@register("gd_raw")
class GDRawLoss(nn.Module):
    """Match the student's InfoNCE gradients to the teacher's by squared error, both directions.

    For (P, K) = (ŝ_v, ŝ_t) [image anchors] and (ŝ_t, ŝ_v) [text anchors], with the teacher's
    (t_v, t_t) likewise: loss = ¼ Σ over the four gradient matrices of mean_i ‖g_s,i − g_t,i‖².
    ŝ = normalize(P(s)) (heads when D_s ≠ D_t) so the gradients live in one space. The student's
    temperature multiplies (CLIP's convention: τ = exp(logit_scale)); the reference divided by it.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Kept to document a failure: this form has a trivial minimiser. Shrinking the student's gradients
    (by collapsing its projected embeddings, so every softmax row is uniform-ish and Q K ≈ 0) lowers
    it without matching any direction, and its magnitude grows with N·τ² (issue 18). Use ``gd``.
    In local_loss mode it still computes the global batch (exact, only not memory-saving).

    Args:
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        total = image.new_zeros(())
        for (s_p, s_k), (t_p, t_k) in (((image, text), (teacher.image, teacher.text)),
                                       ((text, image), (teacher.text, teacher.image))):
            student_grads = infonce_gradients(s_p, s_k, student.logit_scale)
            teacher_grads = infonce_gradients(t_p, t_k, teacher.logit_scale)
            for g_s, g_t in zip(student_grads, teacher_grads):
                total = total + (g_s - g_t.detach()).pow(2).sum(dim=1).mean()
        return total / 4
