"""The training objective: named, weighted loss terms on the globally gathered batch, in fp32."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.distributed import gather_embeddings, local_rows
from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.heads import HEADS, share_heads
from clipdistill.losses.registry import get, needs_teacher


class Objective(nn.Module):
    """Σ_k w_k · loss_k(student, teacher), with every term reported by name.

    Holds the losses (and so their projection heads and learnable scales) as submodules: put the
    objective inside the DDP-wrapped module, hand its parameters to the optimizer, and save its
    state_dict in checkpoints. Embeddings are gathered across ranks here, once, so losses never see
    ``torch.distributed``.

    The loss math runs in fp32 whatever the models ran in: autocast is off inside, and both models'
    embeddings (and scales) are cast to float32 first. Under bf16 a teacher logit of 100 is rounded to
    a multiple of 0.5 before the softmax, and ArcFace's ``1 − 1e-7`` clamp rounds to 1.

    ``local_loss=True`` (open_clip's option) makes each rank compute only its own rows against the
    global columns: logit memory grows linearly with the global batch instead of quadratically, and
    the gradients stay exact (each rank's term is 1/W of the global mean; the with-grad gather sums
    the W contributions, DDP averages them).
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], local_loss: bool = False):
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one loss term")
        # nn.ModuleDict keys cannot hold dots, which module:Class keys do; terms are reported by their own name.
        self.terms = nn.ModuleDict({_module_key(name): loss for name, loss in terms.items()})
        self.term_names = {_module_key(name): name for name in terms}
        self.weights = dict(weights)
        self.local_loss = local_loss

    @property
    def student_patch_dropout(self) -> float:
        """The patch-dropout ratio some term (mfd) asks the student's image tower to train with; 0 if none."""
        return max((getattr(loss, "student_patch_dropout", 0.0) for loss in self.terms.values()), default=0.0)

    @property
    def student_masked_view(self) -> float:
        """The patch-dropout ratio of an extra, masked image forward some term (mfd masked=feature_only)
        reads as ``extras["masked_image"]``, while every other term sees the full image; 0 if none."""
        return max((getattr(loss, "student_masked_view", 0.0) for loss in self.terms.values()), default=0.0)

    @property
    def student_logit_bias(self) -> float | None:
        """The initial logit bias a term (siglip) needs the student to learn, or None if none does."""
        return next((loss.student_logit_bias for loss in self.terms.values()
                     if getattr(loss, "student_logit_bias", None) is not None), None)

    @property
    def needs_teacher(self) -> bool:
        return needs_teacher(self.term_names.values())

    @torch.no_grad()
    def clamp_scales_(self) -> None:
        """Clamp every term's learnable scale in place: call after each optimizer step.

        Clamping the parameter (not the forward's value) keeps the gradient alive at the cap and
        stops the parameter drifting above it, as open_clip does for the student's logit scale.
        """
        for loss in self.terms.values():
            if hasattr(loss, "clamp_"):
                loss.clamp_()

    def forward(self, student: Embeddings, teacher: Embeddings | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total and each term's unweighted value (detached, for logging)."""
        with torch.autocast(student.image.device.type, enabled=False):
            rows = local_rows(student.batch_size) if self.local_loss else None
            student = gather_embeddings(_float32(student), with_grad=True).with_(local_rows=rows)
            if teacher is not None:
                # Teacher targets are constants: detaching here guarantees no gradient ever reaches a teacher.
                teacher = _float32(teacher.with_(image=teacher.image.detach(), text=teacher.text.detach()))
                teacher = gather_embeddings(teacher, with_grad=False)
            values = {self.term_names[key]: loss(student, teacher) for key, loss in self.terms.items()}
            total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}


def _module_key(name: str) -> str:
    return name.replace(".", "_")


def _float32(embeddings: Embeddings) -> Embeddings:
    bias = embeddings.logit_bias
    extras = {k: v.float() if v.is_floating_point() else v for k, v in embeddings.extras.items()}
    return embeddings.with_(image=embeddings.image.float(), text=embeddings.text.float(),
                            logit_scale=torch.as_tensor(embeddings.logit_scale).float(),
                            logit_bias=None if bias is None else torch.as_tensor(bias).float(), extras=extras)


def build_objective(specs: dict[str, dict], student_dim: int, teacher_dim: int | None,
                    local_loss: bool = False, heads: str = "per_loss") -> Objective:
    """``specs``: name -> {"weight": w, **loss kwargs}, as in a config's ``losses`` section.

    A name is a registered loss (``clipdistill.losses.names()``) or ``module:Class``. ``heads``
    (``train.heads``): ``per_loss``, each term its own projection head and scale; ``shared``, one head
    and one cross scale for all terms, as the CLIP-KD reference (:func:`~clipdistill.losses.heads.share_heads`).
    """
    if heads not in HEADS:
        raise UserError(f"train.heads must be one of {', '.join(HEADS)}, got {heads!r}")
    terms, weights = {}, {}
    for name, spec in specs.items():
        kwargs = dict(spec)
        weights[name] = float(kwargs.pop("weight", 1.0))
        if teacher_dim is not None:
            kwargs.setdefault("student_dim", student_dim)
            kwargs.setdefault("teacher_dim", teacher_dim)
        terms[name] = get(name, **kwargs)
    if heads == "shared":
        share_heads(terms)
    return Objective(terms, weights, local_loss=local_loss)
