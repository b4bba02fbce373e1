"""gd_raw: gradient distillation as first tabled (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.3), for the record."""
from __future__ import annotations

import torch

from clipdistill.losses.gd import GDLoss
from clipdistill.losses.registry import register


@register("gd_raw")
class GDRawLoss(GDLoss):
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

    detach_student_scale = False  # as first tabled: the student's temperature is trained through it too

    @staticmethod
    def distance(g_s: torch.Tensor, g_t: torch.Tensor) -> torch.Tensor:
        """Per sample: ‖g_s − g_t‖²."""
        return (g_s - g_t).pow(2).sum(dim=1)
