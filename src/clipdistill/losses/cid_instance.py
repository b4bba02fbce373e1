"""cid_instance: instance discrimination (CLIP-CID, Yang et al. AAAI 2025, Sec. 3.3)."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import infonce
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register
from clipdistill.losses.scales import LearnableScale


@register("cid_instance")
class CIDInstanceLoss(nn.Module):
    """Each student embedding must pick out its own pair among the teacher's embeddings.

    loss = ½[CE(κ ŝ_v t_tᵀ) + CE(κ ŝ_t t_vᵀ)]                      (cross-modal, = ``icl``)
         + ½[CE(κ ŝ_v t_vᵀ) + CE(κ ŝ_t t_tᵀ)]   if ``intra_modal``   (each tower against its teacher twin)

    ŝ = normalize(P(s)) (a head per tower when D_s ≠ D_t), κ learnable (``cross_scale``: by default
    exp(p) from 1/0.07, clamped at 100; ``scale_param="raw"`` learns κ itself, as CLIP-KD's reference
    does for its cross scale; with ``train.heads=shared`` head and κ are icl's). The intra-modal half is on by default: it is what distinguishes CLIP-CID's instance
    term from CLIP-KD's ICL (the paper does not release code; we document this reading in docs/clip_cid.md).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Scales: only the learnable κ (student-vs-teacher cosines with hard diagonal labels). No teacher
    distribution is formed, so the teacher's scale never enters and a sigmoid teacher needs no
    ``teacher_scale`` here (the term has none: a parameter without effect would mislead).

    Args:
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
        intra_modal: add the image→teacher-image and text→teacher-text terms.
        init_scale, max_scale: κ's start and ceiling. scale_param: ``exp`` (κ = exp(p)) or ``raw`` (κ = p).
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, always_project: bool = False,
                 intra_modal: bool = True, init_scale: float = 1 / 0.07, max_scale: float = 100.0,
                 scale_param: str = "exp"):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.cross_scale = LearnableScale(init_scale, scale_param, max_scale)
        self.intra_modal = intra_modal

    def clamp_(self) -> None:
        """κ within its bounds, in place (the objective calls this after every optimizer step)."""
        self.cross_scale.clamp_()

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        kappa = self.cross_scale()  # kept ≤ max_scale by clamp_() after each step
        rows = student.rows
        loss = 0.5 * (infonce(image, teacher.text, kappa, rows) + infonce(text, teacher.image, kappa, rows))
        if self.intra_modal:
            loss = loss + 0.5 * (infonce(image, teacher.image, kappa, rows) + infonce(text, teacher.text, kappa, rows))
        return loss
