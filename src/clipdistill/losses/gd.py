"""gd: gradient distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.3), matching directions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


def infonce_gradients(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor):
    """Per-sample gradients of InfoNCE w.r.t. anchors and candidates, in closed form.

    With Z = τ·P Kᵀ and Q = softmax(Z) − I (row softmax), the batch-mean loss has
    ∂P = τ Q K / N and ∂K = τ Qᵀ P / N. We return N·∂P and N·∂K, the gradients of the *sum* over
    anchors, so the loss scale does not depend on the batch size. Two (N, N)×(N, D) matmuls: never
    an N×D×N tensor (the reference code builds one).

    The diagonal of Q is computed as −Σ_{j≠i} p_ij, not p_ii − 1: for a confident model (a teacher
    at τ = 50) p_ii rounds to 1 in fp32 while the off-diagonal p_ij stay ~1e-9, so p_ii − 1 = 0 would
    drop the −k_i term and turn the gradient's direction (all that ``gd`` compares) around.
    """
    z = scale * anchors @ candidates.t()
    eye = torch.eye(z.shape[0], device=z.device, dtype=torch.bool)
    off_diagonal = z.softmax(dim=1).masked_fill(eye, 0.0)
    q = off_diagonal - torch.diag_embed(off_diagonal.sum(dim=1))
    return scale * q @ candidates, scale * q.t() @ anchors


@register("gd")
class GDLoss(nn.Module):
    """Match the *direction* of each sample's InfoNCE gradient to the teacher's, both directions.

    For (P, K) = (ŝ_v, ŝ_t) [image anchors] and (ŝ_t, ŝ_v) [text anchors], with the teacher's
    (t_v, t_t) likewise, g = the per-sample gradients of :func:`infonce_gradients` (w.r.t. anchors
    and candidates): loss = ¼ Σ over the four gradient matrices of mean_i [1 − cos(g_s,i, g_t,i)].

    Why directions (issue 18): the squared error of the raw gradients (``gd_raw``) is minimised by
    shrinking the student's gradients (collapse its embeddings) rather than matching them, and it grows
    with N·τ². A cosine cannot be lowered by shrinking, lies in [0, 2] whatever N, τ or D, and is 0
    only where every gradient points the teacher's way. The student's temperature is detached inside
    GD, so GD cannot move it to reshape its gradients either (the task loss owns it). ŝ = normalize(P(s))
    (heads when D_s ≠ D_t) so the gradients live in one space; CLIP's convention: τ multiplies (the
    reference divided by it). Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.
    In local_loss mode GD still computes the global batch (exact, only not memory-saving).

    Weight: 1.0, every term's default (the 0.01 of the old ablation was chosen for ``gd_raw``, whose
    magnitude grew with N·τ²). This form is bounded like the task loss (CLIP's is ln N at chance, a few
    units in training), so the two share the update at equal weights. Synthetic ablation, one seed: 25.2 mean R
    (an earlier run's baseline 24.8, old GD at 0.01: 21.8; docs/results.md); no weight sweep yet.

    Args:
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
    """

    needs_teacher = True
    detach_student_scale = True  # the task loss owns the student's temperature

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False):
        super().__init__()
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)

    @staticmethod
    def distance(g_s: torch.Tensor, g_t: torch.Tensor) -> torch.Tensor:
        """Per sample: 1 − cos between the student's and the teacher's gradient."""
        return 1 - F.cosine_similarity(g_s, g_t, dim=1, eps=1e-12)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        image, text = self.project(student, teacher)
        student_scale = student.logit_scale.detach() if self.detach_student_scale else student.logit_scale
        total = image.new_zeros(())
        for (s_p, s_k), (t_p, t_k) in (((image, text), (teacher.image, teacher.text)),
                                       ((text, image), (teacher.text, teacher.image))):
            student_grads = infonce_gradients(s_p, s_k, student_scale)
            teacher_grads = infonce_gradients(t_p, t_k, teacher.logit_scale)
            for g_s, g_t in zip(student_grads, teacher_grads):
                total = total + self.distance(g_s, g_t.detach()).mean()
        return total / 4
