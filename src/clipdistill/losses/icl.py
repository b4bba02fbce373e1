"""ICL: interactive contrastive learning (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.4)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import infonce
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register
from clipdistill.losses.scales import LearnableScale


@register("icl")
class ICLLoss(nn.Module):
    """Contrast student anchors against the teacher's embeddings of the other modality.

    loss = ½[CE(κ ŝ_v t_tᵀ) + CE(κ ŝ_t t_vᵀ)],  ŝ = normalize(P(s)),  κ learnable (``cross_scale``)

    The student image must pick out its own caption among the *teacher's* text embeddings and vice
    versa, so the student is pulled into the teacher's space through contrast rather than regression.
    Reference: winycg/CLIP-KD, src/open_clip/loss.py @ e151019, ``KDClipLoss.forward`` (L≈298-315):
    ``logits_per_s_image_to_t_text = self.cross_logit_scale * normalized_all_image_features @
    t_all_text_features.T`` (text likewise) and ``icl_loss = (CE(those, labels) + CE(..., labels)) / 2``.
    κ: by default exp(p) from 1/0.07 (CLIP's init), clamped at 100 like CLIP's own scale;
    ``scale_param="raw", init_scale=2.659`` is the reference's raw ``cross_logit_scale`` (see
    :class:`~clipdistill.losses.scales.LearnableScale`). With ``train.heads=shared`` the head P and
    κ are shared with the other terms (the reference's one head, and one cross scale with cross_kd).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        student_dim, teacher_dim: learn a linear head P per tower when they differ.
        always_project: learn P even when the dims agree.
        init_scale: initial κ. scale_param: ``exp`` (κ = exp(p)) or ``raw`` (κ = p). max_scale: cap of κ.
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, init_scale: float = 1 / 0.07, scale_param: str = "exp",
                 max_scale: float = 100.0):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.cross_scale = LearnableScale(init_scale, scale_param, max_scale)

    def clamp_(self) -> None:
        """κ within its bounds, in place (the objective calls this after every optimizer step)."""
        self.cross_scale.clamp_()

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        scale = self.cross_scale()  # kept ≤ max_scale by clamp_() after each step
        rows = student.rows
        return 0.5 * (infonce(image, teacher.text, scale, rows) + infonce(text, teacher.image, scale, rows))
