"""One optimization step, and the module DDP wraps."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError


class Distiller(nn.Module):
    """The student and the objective in one module.

    DDP must wrap both: the objective owns learnable parts (projection heads, ICL's scale) whose
    gradients need averaging across ranks like the student's. The teacher stays outside.
    """

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, teacher: Embeddings | None):
        student = Embeddings(
            image=self.student.encode_image(images, normalize=False),
            text=self.student.encode_text(tokens, normalize=False),
            logit_scale=self.student.logit_scale.exp(),
        )
        return self.objective(student, teacher)


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the step is not applied and no checkpoint is written."""


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked (or ``auto``); full fp32 on CPU."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_step(model: nn.Module, batch: dict, teacher_embeddings: Embeddings | None, *, optimizer, scheduler,
               device: torch.device, precision: str, grad_clip: float, step: int) -> tuple[torch.Tensor, dict]:
    """Forward, backward, clip, update. Returns (total loss, {term: value})."""
    images = batch["student_image"].to(device, non_blocking=True)
    tokens = batch["student_text"].to(device, non_blocking=True)
    with autocast(device, precision):
        total, terms = model(images, tokens, teacher_embeddings)
    if not torch.isfinite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)] or ["total"]
        raise NonFiniteLoss(f"non-finite loss at step {step} in term(s) {', '.join(bad)}; "
                            "the last checkpoint is kept — lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    _clamp_logit_scale(model)
    return total.detach(), terms


def _clamp_logit_scale(model: nn.Module) -> None:
    # open_clip clamps the student's temperature after each step: τ_s ≤ 100.
    student = model.module.student if hasattr(model, "module") else model.student
    with torch.no_grad():
        student.logit_scale.clamp_(0, math.log(100))
