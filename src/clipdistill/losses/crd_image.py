"""crd_image: the teacher's image–image similarity distribution (CRD's relational term, images only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import target_logits, teacher_temperature
from clipdistill.losses.registry import register


@register("crd_image")
class CRDImageLoss(nn.Module):
    """Match the student's image–image similarity distribution to the teacher's (no captions needed).

    loss = KL(σ(τ_t t_v t_vᵀ/T) ‖ σ(τ_s ŝ⁰_v ŝ⁰_vᵀ/T))·T²,   the diagonal left out of both softmaxes

    CRD (``crd``) compares image–text distributions; without captions the teacher's geometry is still
    there in how it relates the batch's images to each other (SEED, CompRess). Each image's row is a
    softmax over the *other* N−1 images: its similarity to itself is 1 for both models and would
    dominate every row. ŝ⁰ is the normalized student image embedding (no projection: D_s ≠ D_t is fine).
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized; N ≥ 2.

    Scales as in ``crd``: the student's own τ_s on its side, the teacher's τ_t (or ``teacher_scale``) on
    the teacher's; ``student_scale`` fixes the student's instead (e.g. when nothing else trains τ_s).

    Args:
        temperature: KD temperature T (the T² factor keeps gradients comparable across T).
        teacher_scale: replaces τ_t (None: the teacher's own).
        student_scale: replaces τ_s (None: the student's own, learned).
    """

    needs_teacher = True
    needs_text = False
    one_for_all_teachers = True  # the student side is the same for every teacher: one term against the ensemble's target

    def __init__(self, temperature: float = 1.0, teacher_scale: float | None = None,
                 student_scale: float | None = None):
        super().__init__()
        self.temperature, self.teacher_scale, self.student_scale = temperature, teacher_scale, student_scale

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        s_image, r, t = student.unit("image"), student.rows, self.temperature
        s_scale = student.logit_scale if self.student_scale is None else self.student_scale
        self_pairs = _diagonal(student.batch_size, r, s_image.device)

        def logits_of(member):  # one teacher's image-image logits at its own scale
            t_scale = teacher_temperature(self.teacher_scale, member)
            return (t_scale * member.image[r] @ member.image.t() / t).masked_fill(self_pairs, float("-inf"))

        target = target_logits(teacher, logits_of)  # an ensemble: MobileCLIP's average after softmax
        student_logits = (s_scale * s_image[r] @ s_image.t() / t).masked_fill(self_pairs, float("-inf"))
        return _kl_rows_without_diagonal(target, student_logits, self_pairs) * t * t


def _diagonal(n: int, rows: slice, device: torch.device) -> torch.Tensor:
    """(rows, N) mask of each anchor row's own column (local_loss: this rank's rows of the global batch)."""
    anchors = torch.arange(n, device=device)[rows]
    return anchors[:, None] == torch.arange(n, device=device)[None, :]


def _kl_rows_without_diagonal(target: torch.Tensor, student: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    # kl_rows multiplies p·(log p − log q): on the masked entries p = 0 and both logs are −inf, whose
    # difference is NaN. Zero logits there instead after the softmax, so they contribute 0·finite.
    target_logp = target.log_softmax(dim=1).masked_fill(masked, 0.0)
    student_logp = F.log_softmax(student, dim=1).masked_fill(masked, 0.0)
    return (target_logp.exp().masked_fill(masked, 0.0) * (target_logp - student_logp)).sum(dim=1).mean()
