"""The training objective: named, weighted loss terms on the globally gathered batch, in fp32."""
from __future__ import annotations

import torch
from torch import nn

from clipdistill.distributed import gather_embeddings, local_rows
from clipdistill.embeddings import Embeddings
from clipdistill.ensemble import TeacherEnsemble
from clipdistill.errors import UserError
from clipdistill.losses.heads import HEADS, share_heads
from clipdistill.losses.registry import get, needs_teacher, resolve


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

    Several teachers (a :class:`~clipdistill.ensemble.TeacherEnsemble`; one teacher is the ensemble of
    one): a term whose student side is the same for every teacher (``one_for_all_teachers``: crd,
    soft_clip, affinity, sigmoid_kd) runs once, against the ensemble's target; any other term has one
    copy per teacher (:class:`PerTeacher`: its own heads and scales, in that teacher's space) and is the
    weighted sum of the copies. With more than one teacher each term is also reported per teacher
    (``fd/t0``, ``fd/t1``: a copy's value, or for a one-for-all term its value against that teacher
    alone, computed without gradient, for the record).
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

    def forward(self, student: Embeddings, teacher: Embeddings | TeacherEnsemble | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total and each term's unweighted value (detached, for logging)."""
        with torch.autocast(student.image.device.type, enabled=False):
            rows = local_rows(student.batch_size) if self.local_loss else None
            student = gather_embeddings(_float32(student), with_grad=True).with_(local_rows=rows)
            if teacher is not None:
                teacher = TeacherEnsemble.of(teacher).map(_gathered_constant)
            values, reported = {}, {}
            for key, loss in self.terms.items():
                name = self.term_names[key]
                values[name], per_teacher = _term(loss, student, teacher)
                reported.update({name: values[name].detach(), **{f"{name}/t{k}": v for k, v in per_teacher.items()}})
            total = _weighted_sum(values, self.weights)
        return total, reported


class PerTeacher(nn.Module):
    """One copy of a loss per teacher of an ensemble, each built for its teacher's width (heads, scales)."""

    def __init__(self, copies: list[nn.Module]):
        super().__init__()
        self.copies = nn.ModuleList(copies)

    def clamp_(self) -> None:
        for copy in self.copies:
            if hasattr(copy, "clamp_"):
                copy.clamp_()

    def __getattr__(self, name: str):
        # What the trainer asks a term (student_patch_dropout, student_logit_bias) is the same for every copy.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["copies"][0], name)


def _term(loss: nn.Module, student: Embeddings, teacher: TeacherEnsemble | None) -> tuple[torch.Tensor, dict]:
    """A term's value and, with several teachers, its value per teacher (detached)."""
    if teacher is None or not getattr(loss, "needs_teacher", True):
        return loss(student, teacher), {}
    if getattr(loss, "one_for_all_teachers", False):
        value = loss(student, teacher.focus(0))  # its target is the ensemble's; the student side is shared
        if len(teacher) == 1:
            return value, {}
        with torch.no_grad():  # for the record: the term against each teacher alone
            return value, {k: loss(student, member).detach() for k, member in enumerate(teacher.members)}
    copies = loss.copies if isinstance(loss, PerTeacher) else [loss]
    if len(copies) != len(teacher):
        raise ValueError(f"the objective was built for {len(copies)} teacher(s), the batch has {len(teacher)}")
    values = [copy(student, teacher.focus(k)) for k, copy in enumerate(copies)]
    if len(values) == 1:
        return values[0], {}
    return sum(w * v for w, v in zip(teacher.weights, values)), {k: v.detach() for k, v in enumerate(values)}


def _weighted_sum(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ_k w_k · value_k, without a multiplication where w_k = 1 nor an addition of 0 (each would be an op and
    a backward node more, every step)."""
    weighted = [value if weights[name] == 1 else weights[name] * value for name, value in values.items()]
    return sum(weighted[1:], weighted[0])


def _gathered_constant(teacher: Embeddings) -> Embeddings:
    # Teacher targets are constants: detaching here guarantees no gradient ever reaches a teacher.
    teacher = _float32(teacher.with_(image=teacher.image.detach(), text=teacher.text.detach()))
    return gather_embeddings(teacher, with_grad=False)


def _module_key(name: str) -> str:
    return name.replace(".", "_")


def _float32(embeddings: Embeddings) -> Embeddings:
    bias = embeddings.logit_bias
    extras = {k: v.float() if v.is_floating_point() else v for k, v in embeddings.extras.items()}
    return embeddings.with_(image=embeddings.image.float(), text=embeddings.text.float(),
                            logit_scale=torch.as_tensor(embeddings.logit_scale).float(),
                            logit_bias=None if bias is None else torch.as_tensor(bias).float(), extras=extras)


def build_objective(specs: dict[str, dict], student_dim: int, teacher_dim: int | list[int] | None,
                    local_loss: bool = False, heads: str = "per_loss") -> Objective:
    """``specs``: name -> {"weight": w, **loss kwargs}, as in a config's ``losses`` section.

    A name is a registered loss (``clipdistill.losses.names()``) or ``module:Class``. ``teacher_dim``: the
    teacher's width, or one per teacher of an ensemble; a term that is not ``one_for_all_teachers`` gets one
    copy per teacher (:class:`PerTeacher`) when there are several. ``heads`` (``train.heads``): ``per_loss``,
    each term its own projection head and scale; ``shared``, one head and one cross scale for all terms, as
    the CLIP-KD reference (:func:`~clipdistill.losses.heads.share_heads`); with an ensemble, one per teacher.
    """
    if heads not in HEADS:
        raise UserError(f"train.heads must be one of {', '.join(HEADS)}, got {heads!r}")
    teacher_dims = teacher_dim if isinstance(teacher_dim, (list, tuple)) else [teacher_dim]
    terms, weights = {}, {}
    for name, spec in specs.items():
        kwargs = dict(spec)
        weights[name] = float(kwargs.pop("weight", 1.0))
        cls = resolve(name)
        shared = not getattr(cls, "needs_teacher", True) or getattr(cls, "one_for_all_teachers", False)
        if len(teacher_dims) == 1 or shared:
            terms[name] = _built(name, kwargs, student_dim, teacher_dims[0])
        else:
            terms[name] = PerTeacher([_built(name, kwargs, student_dim, dim) for dim in teacher_dims])
    if heads == "shared":
        for k in range(len(teacher_dims)):  # each teacher's copies share one head (its own width)
            share_heads({name: term.copies[k] if isinstance(term, PerTeacher) else term for name, term in terms.items()})
    return Objective(terms, weights, local_loss=local_loss)


def _built(name: str, kwargs: dict, student_dim: int, teacher_dim: int | None) -> nn.Module:
    kwargs = dict(kwargs)
    if teacher_dim is not None:
        kwargs.setdefault("student_dim", student_dim)
        kwargs.setdefault("teacher_dim", teacher_dim)
    return get(name, **kwargs)
