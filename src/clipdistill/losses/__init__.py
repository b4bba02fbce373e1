"""Distillation losses, one module per file, found by name.

    >>> import clipdistill
    >>> clipdistill.losses.names()                      # every registered loss
    >>> loss = clipdistill.losses.get("fd", student_dim=256, teacher_dim=768)
    >>> value = loss(student_embeddings, teacher_embeddings)   # scalar tensor

Every loss is an ``nn.Module`` whose ``forward(student, teacher)`` takes two
:class:`clipdistill.Embeddings` (student raw, teacher L2-normalized; teacher ``None`` for losses
with ``needs_teacher = False``) and returns a scalar. Losses own their learnable parts (projection
heads, scales) and never call ``torch.distributed``: the
:class:`~clipdistill.losses.objective.Objective` gathers embeddings across ranks once and hands
every loss the global batch.

A loss file registers itself with ``@register("name")`` (see :mod:`clipdistill.losses.registry`);
every module of this package is imported here, so adding a loss is adding a file. A loss defined
outside the package is used by its ``module:Class`` key (docs/losses.md).
"""
from __future__ import annotations

import importlib
import pkgutil

from clipdistill.losses.registry import get, names, needs_teacher, register, resolve

# Importing each module runs its @register decorators: no central list to keep in step.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["get", "names", "needs_teacher", "register", "resolve"]
