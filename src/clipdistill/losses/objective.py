"""The training objective: named, weighted loss terms on the globally gathered batch."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill import losses as registry
from clipdistill.distributed import gather_embeddings, local_rows
from clipdistill.embeddings import Embeddings


class Objective(nn.Module):
    """Σ_k w_k · loss_k(student, teacher), with every term reported by name.

    Holds the losses (and so their projection heads and learnable scales) as submodules: put the
    objective inside the DDP-wrapped module, hand its parameters to the optimizer, and save its
    state_dict in checkpoints. Embeddings are gathered across ranks here, once, so losses never see
    ``torch.distributed``.

    ``local_loss=True`` (open_clip's option) makes each rank compute only its own rows against the
    global columns: logit memory grows linearly with the global batch instead of quadratically, and
    the gradients stay exact (each rank's term is 1/W of the global mean; the with-grad gather sums
    the W contributions, DDP averages them).
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], local_loss: bool = False):
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one loss term")
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.local_loss = local_loss

    @property
    def student_patch_dropout(self) -> float:
        """The patch-dropout ratio some term (mfd) asks the student's image tower to train with; 0 if none."""
        return max((getattr(loss, "student_patch_dropout", 0.0) for loss in self.terms.values()), default=0.0)

    @property
    def needs_teacher(self) -> bool:
        return any(name not in registry.STUDENT_ONLY for name in self.terms)

    def forward(self, student: Embeddings, teacher: Embeddings | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total and each term's unweighted value (detached, for logging)."""
        rows = local_rows(student.batch_size) if self.local_loss else None
        student = gather_embeddings(student, with_grad=True).with_(local_rows=rows)
        if teacher is not None:
            # Teacher targets are constants: detaching here guarantees no gradient ever reaches a teacher.
            teacher = gather_embeddings(teacher.with_(image=teacher.image.detach(), text=teacher.text.detach()),
                                        with_grad=False)
        values = {name: loss(student, teacher) for name, loss in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}


def build_objective(specs: dict[str, dict], student_dim: int, teacher_dim: int | None,
                    local_loss: bool = False) -> Objective:
    """``specs``: name -> {"weight": w, **loss kwargs}, as in a config's ``losses`` section."""
    terms, weights = {}, {}
    for name, spec in specs.items():
        kwargs = dict(spec)
        weights[name] = float(kwargs.pop("weight", 1.0))
        if teacher_dim is not None:
            kwargs.setdefault("student_dim", student_dim)
            kwargs.setdefault("teacher_dim", teacher_dim)
        terms[name] = registry.get(name, **kwargs)
    return Objective(terms, weights, local_loss=local_loss)
