"""Batch-level building blocks shared by several losses (pure functions, no state)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def diagonal_labels(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def rows_of(x: torch.Tensor, rows: slice) -> torch.Tensor:
    """``x[rows]``; ``x`` itself when ``rows`` is every row (all but local_loss runs), where a slice would only
    add a view op and its backward node (a step's loss terms make dozens: a measurable share on a small student)."""
    return x if rows == slice(None) else x[rows]


def infonce(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor,
            rows: slice = slice(None)) -> torch.Tensor:
    """CE(scale·anchors candidatesᵀ) with the diagonal as labels: anchor i must pick candidate i.

    ``rows`` restricts the anchors (local_loss mode: this rank's rows against all candidates).
    """
    logits = scale * rows_of(anchors, rows) @ candidates.t()
    return F.cross_entropy(logits, rows_of(diagonal_labels(anchors.shape[0], anchors.device), rows))


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                      rows: slice = slice(None)) -> torch.Tensor:
    """½[CE(scale·a bᵀ) + CE(scale·b aᵀ)]. ``a``, ``b``: (N, D) normalized. One product when every row is
    computed (:func:`similarity_logits`), as open_clip's ClipLoss."""
    a_rows, b_rows = similarity_logits(a, b, scale, rows)
    labels = rows_of(diagonal_labels(a.shape[0], a.device), rows)
    return 0.5 * (F.cross_entropy(a_rows, labels) + F.cross_entropy(b_rows, labels))


def sigmoid_logits(images: torch.Tensor, texts: torch.Tensor, scale, bias) -> torch.Tensor:
    """scale · images textsᵀ + bias: the (rows, N) logits of a sigmoid-trained model (SigLIP)."""
    return scale * images @ texts.t() + bias


def kl_rows(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(σ(target) ‖ σ(student)) per row, averaged over rows (σ = row softmax).

    ``target_logits`` may be a :class:`MixedSoftmax` (an ensemble's target): only its ``log_softmax`` is used.
    ``F.kl_div`` on log-probabilities computes Σ_j p_j (log p_j − log q_j) in one op (and one backward node).
    """
    target_logp = target_logits.log_softmax(dim=1)
    student_logp = F.log_softmax(student_logits, dim=1)
    return F.kl_div(student_logp, target_logp, reduction="batchmean", log_target=True)


def soft_cross_entropy(target_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """H(σ(target), σ(student)) = −Σ_j p_j log q_j per row, averaged over rows (``target_logits`` may be a
    :class:`MixedSoftmax`)."""
    return -(target_logits.softmax(dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def members_and_weights(teacher) -> list[tuple[object, float]]:
    """Each teacher of ``teacher``'s ensemble (a :class:`~clipdistill.ensemble.TeacherView`) with its weight;
    plain embeddings are a teacher of weight 1."""
    ensemble = getattr(teacher, "ensemble", None)
    return list(zip(ensemble.members, ensemble.weights)) if ensemble is not None else [(teacher, 1.0)]


class MixedSoftmax:
    """p̄ = Σ_k w_k σ(z_k): the ensemble's target distribution (MobileCLIP's rule: softmax per teacher, then
    the weighted average; Σ w_k = 1). Stands where a target-logits tensor stands in :func:`kl_rows` and
    :func:`soft_cross_entropy`, which only ask for ``softmax`` / ``log_softmax`` along the rows."""

    def __init__(self, logits: list[torch.Tensor], weights: list[float]):
        self.logits, self.weights = logits, weights

    def softmax(self, dim: int) -> torch.Tensor:
        return sum(w * z.softmax(dim=dim) for z, w in zip(self.logits, self.weights))

    def log_softmax(self, dim: int) -> torch.Tensor:
        # log Σ_k w_k σ(z_k) = logsumexp_k(log w_k + log σ(z_k)): no probability underflows to log 0.
        terms = [z.log_softmax(dim=dim) + math.log(w) for z, w in zip(self.logits, self.weights)]
        return torch.logsumexp(torch.stack(terms), dim=0)


def target_logits(teacher, logits_of):
    """The teacher side of a distribution term: ``logits_of(member)`` for one teacher, the :class:`MixedSoftmax`
    of every member's logits for an ensemble. ``logits_of`` gives a member's (rows, N) logits at its own scale."""
    pairs = members_and_weights(teacher)
    return mixed([logits_of(member) for member, _ in pairs], [w for _, w in pairs])


def mixed(logits: list[torch.Tensor], weights: list[float]):
    """Each teacher's logits, one per member, as one target: a single teacher's as they are (exactly the
    single-teacher computation), several as their :class:`MixedSoftmax`."""
    return logits[0] if len(logits) == 1 else MixedSoftmax(logits, weights)


def weighted_mean(teacher, value_of) -> torch.Tensor:
    """Σ_k w_k value_of(member_k) over the ensemble (``value_of(teacher)`` itself for one teacher): e.g. the
    averaged sigmoid targets of ``sigmoid_kd``."""
    pairs = members_and_weights(teacher)
    if len(pairs) == 1:
        return value_of(pairs[0][0])
    return sum(w * value_of(member) for member, w in pairs)


def teacher_temperature(override: float | None, teacher) -> torch.Tensor | float:
    """The teacher's softmax scale τ_t: ``override`` when given (a sigmoid teacher's learned scale is
    not a softmax temperature), else the teacher's own ``logit_scale``."""
    return teacher.logit_scale if override is None else override


def relation_loss(student, teacher, row_loss, *, student_scale, teacher_scale, temperature: float = 1.0):
    """½[row_loss over image rows + row_loss over text rows]·T² between the two models' similarity logits.

    Image rows: teacher ``τ_t t_v t_tᵀ/T`` vs student ``τ_s ŝ⁰_v ŝ⁰_tᵀ/T`` (ŝ⁰ = normalized student
    embedding); text rows likewise. ``row_loss(target_logits, student_logits)`` is e.g. :func:`kl_rows`
    (CRD) or :func:`soft_cross_entropy` (soft_clip, affinity). Only ``student.rows`` are computed.
    ``teacher_scale``: τ_t, or a function of a teacher giving its τ_t (each member of an ensemble its own).
    An ensemble's target is the weighted average of its members' distributions (:func:`target_logits`).
    """
    s_image, s_text = student.unit("image"), student.unit("text")
    r, t = student.rows, temperature
    scale_of = teacher_scale if callable(teacher_scale) else lambda _: teacher_scale
    student_image_rows, student_text_rows = similarity_logits(s_image, s_text, _tempered(student_scale, t), r)
    pairs = members_and_weights(teacher)
    # Each teacher's (image rows, text rows): one product per teacher, both directions.
    members = [similarity_logits(m.image, m.text, _tempered(scale_of(m), t), r) for m, _ in pairs]
    weights = [w for _, w in pairs]
    image_rows = row_loss(mixed([m[0] for m in members], weights), student_image_rows)
    text_rows = row_loss(mixed([m[1] for m in members], weights), student_text_rows)
    loss = 0.5 * (image_rows + text_rows)
    return loss if t == 1 else loss * t * t


def similarity_logits(image: torch.Tensor, text: torch.Tensor, scale,
                      rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale·image[rows] textᵀ, scale·text[rows] imageᵀ): each modality's rows against the other's candidates.

    With every row (no local_loss) the second is the first transposed, so it is computed once, as
    open_clip's ClipLoss does (``logits_per_text = logits_per_image.T``).
    """
    image_rows = scale * rows_of(image, rows) @ text.t()
    if rows == slice(None):
        return image_rows, image_rows.t()
    return image_rows, scale * text[rows] @ image.t()


def _tempered(scale, temperature: float):
    # A scale divided by T (the logits are then divided by T), without an op when T = 1 (the default).
    return scale if temperature == 1 else scale / temperature
