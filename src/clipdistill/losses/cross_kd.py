"""cross_kd: cross-model relational distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.4 variant)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import kl_rows, target_logits, teacher_temperature
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register
from clipdistill.losses.scales import LearnableScale


@register("cross_kd")
class CrossKDLoss(nn.Module):
    """Match the distribution of a student anchor over the *teacher's* candidates to the teacher's own.

    loss = ½[KL(σ(τ_t t_v t_tᵀ/T) ‖ σ(κ ŝ_v t_tᵀ/T)) + KL(σ(τ_t t_t t_vᵀ/T) ‖ σ(κ ŝ_t t_vᵀ/T))]·T²

    ŝ = normalize(P(s)) (a head per tower when D_s ≠ D_t), κ a learnable scale (``cross_scale``: by
    default exp(p) from 1/0.07, ≤ 100; ``scale_param="raw", init_scale=2.659`` is the reference's).
    Where ICL uses hard labels over the teacher's candidates, this uses the teacher's soft ones.
    Reference: winycg/CLIP-KD, src/open_clip/loss.py @ e151019, ``KDClipLoss.forward`` (L≈320-321):
    ``cross_kd_loss = (self.kl_loss(logits_per_s_image_to_t_text, t_logits_per_image.detach()) +
    self.kl_loss(logits_per_s_text_to_t_image, t_logits_per_text.detach())) / 2`` with ``DistillKL(T=1)``
    and ICL's logits, i.e. ICL's ``cross_logit_scale``, used raw: ``train.heads=shared`` shares κ
    (and the head) with icl as the reference does.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Scales: the student side uses the learnable κ; the teacher side the teacher's own τ_t
    (``teacher.logit_scale``) unless ``teacher_scale`` is given (set it for a sigmoid-trained teacher).

    Args:
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
        temperature: KD temperature T. init_scale, max_scale: κ's start and ceiling.
        scale_param: ``exp`` (κ = exp(p)) or ``raw`` (κ = p).
        teacher_scale: replaces τ_t (None: the teacher's own).
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, temperature: float = 1.0, init_scale: float = 1 / 0.07,
                 max_scale: float = 100.0, teacher_scale: float | None = None, scale_param: str = "exp"):
        super().__init__()
        self.teacher_scale = teacher_scale
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.cross_scale = LearnableScale(init_scale, scale_param, max_scale)
        self.temperature = temperature

    def clamp_(self) -> None:
        """κ within its bounds, in place (the objective calls this after every optimizer step)."""
        self.cross_scale.clamp_()

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        kappa = self.cross_scale()  # kept ≤ max_scale by clamp_() after each step
        t = self.temperature
        r = student.rows
        tau = partial(teacher_temperature, self.teacher_scale)
        # The student ranks this teacher's candidates through this teacher's head (one copy of the term per
        # teacher); the target is the ensemble's (this teacher's own distribution when it is alone).
        image_rows = kl_rows(target_logits(teacher, lambda m: tau(m) * m.image[r] @ m.text.t() / t),
                             kappa * image[r] @ teacher.text.t() / t)
        text_rows = kl_rows(target_logits(teacher, lambda m: tau(m) * m.text[r] @ m.image.t() / t),
                            kappa * text[r] @ teacher.image.t() / t)
        return 0.5 * (image_rows + text_rows) * t * t
