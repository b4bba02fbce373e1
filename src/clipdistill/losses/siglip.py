"""siglip: the student's own sigmoid task loss (Zhai et al. 2023; open_clip's SigLipLoss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.functional import sigmoid_logits
from clipdistill.losses.registry import register


@register("siglip")
class SigLipLoss(nn.Module):
    """Every image–text pair of the batch is its own binary question: is this the matching caption?

    loss = −(1/N) Σ_i Σ_j log σ(y_ij (τ_s ŝ⁰_v,i · ŝ⁰_t,j + b_s)),  y_ij = +1 if i = j else −1

    ŝ⁰ = normalized student embedding, τ_s = student.logit_scale, b_s = student.logit_bias. Equal to
    ``open_clip.loss.SigLipLoss`` on the whole (gathered) batch: open_clip exchanges text blocks
    between ranks, we gather once and take all pairs, the same sum (tested on 2 ranks). In local_loss
    mode only this rank's image rows are summed (divided by their count), as open_clip's per-rank loss.

    The student needs a learnable bias: with ``siglip`` in the losses, a student without one gets
    open_clip's own ``logit_bias`` parameter, initialized to ``init_bias`` (SigLIP's −10), which the
    trainer adds to the model (``student_logit_bias``). The teacher is ignored (it may be None).
    Shapes: student (N, D_s) raw.

    Args:
        init_bias: the initial student logit bias when the student has none (open_clip: −10).
    """

    needs_teacher = False

    def __init__(self, init_bias: float = -10.0):
        super().__init__()
        self.student_logit_bias = init_bias

    def forward(self, student: Embeddings, teacher: Embeddings | None = None) -> torch.Tensor:
        if student.logit_bias is None:
            raise UserError("siglip needs a student with a logit bias (the trainer adds one when siglip is "
                            "among the losses; in your own code: clipdistill.models.student.add_logit_bias)")
        rows = student.rows
        image, text = student.unit("image"), student.unit("text")
        logits = sigmoid_logits(image[rows], text, student.logit_scale, student.logit_bias)
        signs = 2 * torch.eye(student.batch_size, device=logits.device, dtype=logits.dtype)[rows] - 1
        return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
