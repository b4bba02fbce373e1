"""Several teachers' embeddings of one batch, each with its weight: what the objective distills from.

A run with one teacher is the ensemble of one (weight 1). The objective hands each loss one teacher at a
time as a :class:`TeacherView`: that teacher's own :class:`~clipdistill.Embeddings` (so a loss written
for one teacher works unchanged) which also carries the whole ensemble. A loss that distills to a
*distribution* builds the ensemble's target from all members
(:func:`clipdistill.losses.functional.target_logits`: MobileCLIP's rule, each teacher's softmax at its
own scale, then the weighted average); a feature loss only reads its own teacher's fields.

A teacher's ``temperature`` (its softmax scale τ) travels as its ``logit_scale``: the targets object
sets it, so every loss that reads ``teacher.logit_scale`` uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from clipdistill.embeddings import Embeddings


@dataclass(frozen=True)
class TeacherEnsemble:
    """``members``: each teacher's normalized embeddings of the same samples; ``weights``: their shares, summing to 1."""

    members: tuple[Embeddings, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.weights):
            raise ValueError(f"an ensemble needs one weight per member, got {len(self.members)} members and "
                             f"{len(self.weights)} weights")
        sizes = {m.batch_size for m in self.members}
        if len(sizes) != 1:
            raise ValueError(f"the teachers embedded different batch sizes: {sorted(sizes)}")

    @classmethod
    def weighted(cls, members, weights) -> "TeacherEnsemble":
        """Members with weights normalized to sum to 1 (so an even mix of any size keeps each term's scale)."""
        total = float(sum(weights))
        return cls(tuple(members), tuple(float(w) / total for w in weights))

    @classmethod
    def of(cls, teacher: "Embeddings | TeacherEnsemble") -> "TeacherEnsemble":
        """``teacher`` as an ensemble: a single teacher's embeddings become the ensemble of one."""
        return teacher if isinstance(teacher, TeacherEnsemble) else cls((teacher,), (1.0,))

    def __len__(self) -> int:
        return len(self.members)

    def map(self, change) -> "TeacherEnsemble":
        """The same ensemble with ``change(member)`` for every member (gathering, casting)."""
        return TeacherEnsemble(tuple(change(m) for m in self.members), self.weights)

    def focus(self, index: int) -> "TeacherView":
        """Member ``index`` as the teacher a loss sees, carrying this ensemble."""
        member = self.members[index]
        return TeacherView(**{name: getattr(member, name) for name in _EMBEDDINGS_FIELDS}, ensemble=self)


# Embeddings' constructor arguments, named once: torch.compile cannot trace dataclasses.fields() of a class
# (train.compile=all broke the objective's graph at every focus()).
_EMBEDDINGS_FIELDS = tuple(f.name for f in fields(Embeddings) if f.init)


@dataclass(frozen=True)
class TeacherView(Embeddings):
    """One member's embeddings (every field of :class:`Embeddings` is that member's) and the ``ensemble`` it is in."""

    ensemble: TeacherEnsemble | None = None
