"""Distillation losses, one module per file, selectable by name.

    >>> import clipdistill
    >>> loss = clipdistill.losses.get("fd", student_dim=256, teacher_dim=768)
    >>> value = loss(student_embeddings, teacher_embeddings)   # scalar tensor

Every loss is an ``nn.Module`` whose ``forward(student, teacher)`` takes two
:class:`clipdistill.Embeddings` (student raw, teacher L2-normalized) and returns a scalar. Losses
own their learnable parts (projection heads, scales) and never call ``torch.distributed``: the
:class:`~clipdistill.losses.objective.Objective` gathers embeddings across ranks once and hands
every loss the global batch.
"""
from __future__ import annotations

import inspect

from torch import nn

from clipdistill.errors import UserError
from clipdistill.losses.affinity import AffinityLoss
from clipdistill.losses.afd import AFDLoss
from clipdistill.losses.cid_cluster import CIDClusterLoss
from clipdistill.losses.cid_instance import CIDInstanceLoss
from clipdistill.losses.clip import ClipLoss
from clipdistill.losses.crd import CRDLoss
from clipdistill.losses.cross_kd import CrossKDLoss
from clipdistill.losses.fd import FDLoss
from clipdistill.losses.gd import GDLoss
from clipdistill.losses.icl import ICLLoss
from clipdistill.losses.mfd import MFDLoss
from clipdistill.losses.soft_clip import SoftClipLoss

REGISTRY: dict[str, type[nn.Module]] = {
    "clip": ClipLoss,
    "crd": CRDLoss,
    "fd": FDLoss,
    "mfd": MFDLoss,
    "gd": GDLoss,
    "icl": ICLLoss,
    "cross_kd": CrossKDLoss,
    "afd": AFDLoss,
    "soft_clip": SoftClipLoss,
    "affinity": AffinityLoss,
    "cid_cluster": CIDClusterLoss,
    "cid_instance": CIDInstanceLoss,
}

# Losses that only look at the student: a run made of these alone needs no teacher.
STUDENT_ONLY = {"clip"}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, **kwargs) -> nn.Module:
    """Build the loss called ``name`` with keyword hyperparameters.

    ``student_dim``/``teacher_dim`` are accepted by every loss (ignored where no head is needed), so
    a caller can pass them uniformly.
    """
    if name not in REGISTRY:
        raise UserError(f"unknown loss '{name}' (available: {', '.join(names())})")
    cls = REGISTRY[name]
    accepted = inspect.signature(cls.__init__).parameters
    for key in ("student_dim", "teacher_dim"):
        if key not in accepted:
            kwargs.pop(key, None)
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        allowed = [p for p in accepted if p != "self"]
        raise UserError(f"loss '{name}' has no parameter '{unknown[0]}' (parameters: {', '.join(allowed) or 'none'})")
    return cls(**kwargs)


__all__ = ["get", "names", "REGISTRY", "STUDENT_ONLY", "AffinityLoss", "AFDLoss", "ClipLoss", "CRDLoss",
           "CrossKDLoss", "FDLoss", "GDLoss", "ICLLoss", "MFDLoss", "SoftClipLoss", "CIDClusterLoss", "CIDInstanceLoss"]
