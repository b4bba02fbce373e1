"""Batch-level building blocks shared by several losses (pure functions, no state)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diagonal_labels(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def infonce(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CE(scale·anchors candidatesᵀ) with the diagonal as labels: anchor i must pick candidate i."""
    logits = scale * anchors @ candidates.t()
    return F.cross_entropy(logits, diagonal_labels(anchors.shape[0], anchors.device))


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """½[CE(scale·a bᵀ) + CE(scale·b aᵀ)]. ``a``, ``b``: (N, D) normalized."""
    return 0.5 * (infonce(a, b, scale) + infonce(b, a, scale))


def kl_rows(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(σ(target) ‖ σ(student)) per row, averaged over rows (σ = row softmax)."""
    target_logp = F.log_softmax(target_logits, dim=1)
    student_logp = F.log_softmax(student_logits, dim=1)
    return (target_logp.exp() * (target_logp - student_logp)).sum(dim=1).mean()
