"""sigmoid_kd: sigmoid distillation on the pairwise image–text matrix (as MobileCLIP2 distills SigLIP teachers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.functional import sigmoid_logits, weighted_mean
from clipdistill.losses.registry import register


@register("sigmoid_kd")
class SigmoidKDLoss(nn.Module):
    """Each pair's match probability under the student should equal the teacher's.

    p_ij = σ(τ_t t_v,i · t_t,j + b_t)       (teacher, soft target)
    z_ij = τ_s ŝ⁰_v,i · ŝ⁰_t,j + b_s        (student logit)
    loss = (1/N) Σ_i Σ_j BCE(z_ij, p_ij),   BCE(z, p) = −p log σ(z) − (1 − p) log σ(−z)

    The N×N matrix covers both directions (row i: image i against every caption; column j: caption
    j against every image), so there is no separate text-row term. The sum over candidates and mean
    over anchors is SigLIP's normalization, so weights are comparable with the ``siglip`` task loss
    (MobileCLIP2's training code was not at hand to confirm its exact reduction). It is zero-gradient,
    not zero-valued, at the teacher (BCE keeps the teacher's entropy). In local_loss mode only this
    rank's image rows are computed.

    Scales: the **teacher side** uses the teacher's own ``logit_scale`` and ``logit_bias`` when it has
    a bias (a sigmoid-trained teacher); ``teacher_scale`` / ``teacher_bias`` override them. A softmax
    teacher has no bias and its temperature is not a sigmoid scale, so it needs ``teacher_scale``
    (bias 0 unless ``teacher_bias``); without it the loss stops with one line. The **student side**
    uses the student's own scale and bias: like ``siglip``, this term gives a student without a bias a
    learnable one (init ``init_bias``). ŝ⁰ = normalized student embedding (no projection: only
    similarities are compared, so D_s ≠ D_t is fine). Shapes: student (N, D_s) raw, teacher (N, D_t).

    Args:
        teacher_scale: the teacher's sigmoid scale τ_t (default: the teacher's own, if sigmoid-trained).
        teacher_bias: the teacher's bias b_t (default: the teacher's own, else 0).
        init_bias: the initial student logit bias when the student has none (−10).
    """

    needs_teacher = True
    one_for_all_teachers = True  # the student side is the same for every teacher: one term against the ensemble's target

    def __init__(self, teacher_scale: float | None = None, teacher_bias: float | None = None,
                 init_bias: float = -10.0):
        super().__init__()
        self.teacher_scale, self.teacher_bias = teacher_scale, teacher_bias
        self.student_logit_bias = init_bias

    def teacher_scale_and_bias(self, teacher: Embeddings) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        sigmoid_teacher = teacher.logit_bias is not None
        if self.teacher_scale is None and not sigmoid_teacher:
            raise UserError("sigmoid_kd: the teacher has no logit bias (softmax-trained), so its temperature is "
                            "no sigmoid scale: set losses.sigmoid_kd.teacher_scale (e.g. 10)")
        scale = self.teacher_scale if self.teacher_scale is not None else teacher.logit_scale
        bias = self.teacher_bias if self.teacher_bias is not None else teacher.logit_bias if sigmoid_teacher else 0.0
        return scale, bias

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        rows = student.rows
        # An ensemble's target: each teacher's sigmoid at its own scale and bias, averaged with the weights.
        targets = weighted_mean(teacher, lambda m: torch.sigmoid(sigmoid_logits(m.image[rows], m.text,
                                                                               *self.teacher_scale_and_bias(m))))
        image, text = student.unit("image"), student.unit("text")
        student_bias = student.logit_bias if student.logit_bias is not None else 0.0
        logits = sigmoid_logits(image[rows], text, student.logit_scale, student_bias)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
