"""The training objective: named, weighted loss terms on the globally gathered batch."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill import losses as registry
from clipdistill.distributed import gather_embeddings
from clipdistill.embeddings import Embeddings


class Objective(nn.Module):
    """Σ_k w_k · loss_k(student, teacher), with every term reported by name.

    Holds the losses (and so their projection heads and learnable scales) as submodules: put the
    objective inside the DDP-wrapped module, hand its parameters to the optimizer, and save its
    state_dict in checkpoints. Embeddings are gathered across ranks here, once, so losses never see
    ``torch.distributed``.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one loss term")
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    @property
    def needs_teacher(self) -> bool:
        return any(name not in registry.STUDENT_ONLY for name in self.terms)

    def forward(self, student: Embeddings, teacher: Embeddings | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total and each term's unweighted value (detached, for logging)."""
        student = gather_embeddings(student, with_grad=True)
        if teacher is not None:
            # Teacher targets are constants: detaching here guarantees no gradient ever reaches a teacher.
            teacher = gather_embeddings(teacher.with_(image=teacher.image.detach(), text=teacher.text.detach()),
                                        with_grad=False)
        values = {name: loss(student, teacher) for name, loss in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}


def build_objective(specs: dict[str, dict], student_dim: int, teacher_dim: int | None) -> Objective:
    """``specs``: name -> {"weight": w, **loss kwargs}, as in a config's ``losses`` section."""
    terms, weights = {}, {}
    for name, spec in specs.items():
        kwargs = dict(spec)
        weights[name] = float(kwargs.pop("weight", 1.0))
        if teacher_dim is not None:
            kwargs.setdefault("student_dim", student_dim)
            kwargs.setdefault("teacher_dim", teacher_dim)
        terms[name] = registry.get(name, **kwargs)
    return Objective(terms, weights)
