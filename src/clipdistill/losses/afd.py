"""afd: augmented feature distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.functional import symmetric_infonce
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register
from clipdistill.losses.scales import LearnableScale


@register("afd")
class AFDLoss(nn.Module):
    """Fuse each student embedding with the teacher's and train the fused features contrastively.

    f_v = normalize(W_v [ŝ_v ; t_v]),  f_t = normalize(W_t [ŝ_t ; t_t]),  W: 2·D_t → D_t
    loss = ½[CE(ρ f_v f_tᵀ) + CE(ρ f_t f_vᵀ)],  ρ learnable (``fusion_scale``: exp(p) from 1/0.07, ≤ 100)

    ŝ = normalize(P(s)) with a head per tower when D_s ≠ D_t, so this works for any student width
    (the reference code crashes when the widths differ, and its AFD script actually runs CRD).
    Reference: winycg/CLIP-KD, src/open_clip/loss.py @ e151019, ``KDClipLoss.forward`` (L≈339-352):
    ``img_fusion_feat = self.visual_fusion_proj(torch.cat([normalized_all_image_features,
    t_all_image_features], dim=1))``, normalized, ``logits_per_fusion_image = self.fusion_logit_scale *
    img_fusion_feat @ txt_fusion_feat.T`` and the symmetric CE. Its ``fusion_logit_scale`` is its own
    raw parameter (init 2.659; ``scale_param="raw", init_scale=2.659`` here), not ICL's: ρ is never
    shared, while P is with ``train.heads=shared``.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        student_dim, teacher_dim: widths; ``teacher_dim`` is required (it sizes the fusion layers).
        always_project: head even when D_s == D_t. init_scale, max_scale: ρ's start and ceiling.
        scale_param: ``exp`` (ρ = exp(p)) or ``raw`` (ρ = p).
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, init_scale: float = 1 / 0.07, max_scale: float = 100.0,
                 scale_param: str = "exp"):
        super().__init__()
        if teacher_dim is None:
            raise ValueError("afd needs teacher_dim= (and student_dim= when it differs) to size its fusion layers")
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.fuse_image = nn.Linear(2 * teacher_dim, teacher_dim)
        self.fuse_text = nn.Linear(2 * teacher_dim, teacher_dim)
        self.fusion_scale = LearnableScale(init_scale, scale_param, max_scale)

    def clamp_(self) -> None:
        """ρ within its bounds, in place (the objective calls this after every optimizer step)."""
        self.fusion_scale.clamp_()

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        fused_image = F.normalize(self.fuse_image(torch.cat([image, teacher.image], dim=1)), dim=-1)
        fused_text = F.normalize(self.fuse_text(torch.cat([text, teacher.text], dim=1)), dim=-1)
        rho = self.fusion_scale()  # kept ≤ max_scale by clamp_() after each step
        return symmetric_infonce(fused_image, fused_text, rho, student.rows)
