"""affinity: TinyCLIP's affinity mimicking (Wu et al., ICCV 2023)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import soft_cross_entropy


class AffinityLoss(nn.Module):
    """Mimic the teacher's image-to-text and text-to-image affinities under one fixed shared scale.

    loss = ½[H(σ(s t_v t_tᵀ), σ(s ŝ⁰_v ŝ⁰_tᵀ)) + H(σ(s t_t t_vᵀ), σ(s ŝ⁰_t ŝ⁰_vᵀ))]

    Unlike ``soft_clip``, which sharpens each model's distribution with its own learned temperature,
    both affinity matrices use the same constant scale ``s``, so the student is asked to reproduce
    the teacher's geometry rather than the teacher's confidence. H is the soft cross-entropy
    averaged over rows. Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        scale: the shared multiplicative scale s (default 100, CLIP's trained ceiling).
    """

    def __init__(self, scale: float = 100.0):
        super().__init__()
        self.scale = scale

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        s_image, s_text = F.normalize(student.image, dim=-1), F.normalize(student.text, dim=-1)
        r, s = student.rows, self.scale
        return 0.5 * (soft_cross_entropy(s * teacher.image[r] @ teacher.text.t(), s * s_image[r] @ s_text.t())
                      + soft_cross_entropy(s * teacher.text[r] @ teacher.image.t(), s * s_text[r] @ s_image.t()))
