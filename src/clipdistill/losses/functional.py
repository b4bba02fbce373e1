"""Batch-level building blocks shared by several losses (pure functions, no state)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diagonal_labels(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def infonce(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor,
            rows: slice = slice(None)) -> torch.Tensor:
    """CE(scale·anchors candidatesᵀ) with the diagonal as labels: anchor i must pick candidate i.

    ``rows`` restricts the anchors (local_loss mode: this rank's rows against all candidates).
    """
    logits = scale * anchors[rows] @ candidates.t()
    return F.cross_entropy(logits, diagonal_labels(anchors.shape[0], anchors.device)[rows])


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                      rows: slice = slice(None)) -> torch.Tensor:
    """½[CE(scale·a bᵀ) + CE(scale·b aᵀ)]. ``a``, ``b``: (N, D) normalized."""
    return 0.5 * (infonce(a, b, scale, rows) + infonce(b, a, scale, rows))


def sigmoid_logits(images: torch.Tensor, texts: torch.Tensor, scale, bias) -> torch.Tensor:
    """scale · images textsᵀ + bias: the (rows, N) logits of a sigmoid-trained model (SigLIP)."""
    return scale * images @ texts.t() + bias


def kl_rows(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(σ(target) ‖ σ(student)) per row, averaged over rows (σ = row softmax)."""
    target_logp = F.log_softmax(target_logits, dim=1)
    student_logp = F.log_softmax(student_logits, dim=1)
    return (target_logp.exp() * (target_logp - student_logp)).sum(dim=1).mean()


def soft_cross_entropy(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """H(σ(target), σ(student)) = −Σ_j p_j log q_j per row, averaged over rows."""
    return -(target_logits.softmax(dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def teacher_temperature(override: float | None, teacher) -> torch.Tensor | float:
    """The teacher's softmax scale τ_t: ``override`` when given (a sigmoid teacher's learned scale is
    not a softmax temperature), else the teacher's own ``logit_scale``."""
    return teacher.logit_scale if override is None else override


def relation_loss(student, teacher, row_loss, *, student_scale, teacher_scale, temperature: float = 1.0):
    """½[row_loss over image rows + row_loss over text rows]·T² between the two models' similarity logits.

    Image rows: teacher ``τ_t t_v t_tᵀ/T`` vs student ``τ_s ŝ⁰_v ŝ⁰_tᵀ/T`` (ŝ⁰ = normalized student
    embedding); text rows likewise. ``row_loss(target_logits, student_logits)`` is e.g. :func:`kl_rows`
    (CRD) or :func:`soft_cross_entropy` (soft_clip, affinity). Only ``student.rows`` are computed.
    """
    s_image, s_text = F.normalize(student.image, dim=-1), F.normalize(student.text, dim=-1)
    r, t = student.rows, temperature
    image_rows = row_loss(teacher_scale * teacher.image[r] @ teacher.text.t() / t,
                          student_scale * s_image[r] @ s_text.t() / t)
    text_rows = row_loss(teacher_scale * teacher.text[r] @ teacher.image.t() / t,
                         student_scale * s_text[r] @ s_image.t() / t)
    return 0.5 * (image_rows + text_rows) * t * t
