"""Margin softmax over class centres split across ranks: Partial FC (An et al., CVPR 2022).

The reference is insightface's ``recognition/arcface_torch/partial_fc_v2.py`` (``PartialFC_V2``,
``DistCrossEntropyFunc``, ``AllGatherFunc``), the head UNICOM trains its ~10⁶ cluster centres with.
What is kept from it:

- rank r of W holds the contiguous rows :func:`shard_rows` (K // W, one more on the first K % W ranks);
- every rank classifies every row of the gathered batch against its own shard's sampled centres;
- the softmax denominator is exact: an all-reduce of the row maxima (MAX) and of the row sums of
  exponentials (SUM); the target's logit comes from the one rank that holds it;
- the gathered features' gradient weighs W on each rank (``grad_out *= world_size`` there), because
  the gather sums it over ranks and DDP then averages it.

One deliberate difference, the negatives: PartialFC draws each shard's negatives on its rank alone
(exactly rate·K/W per shard). Here every rank makes the same global draw (:func:`sample_classes`,
seeded from the batch's labels, O(rate·K) integers) and keeps the classes that fall in its shard, so
the sampled set, the loss and every gradient do not depend on the world size (2 ranks equal 1 rank
with rate < 1 too, tested); a shard's share of the negatives is then binomial around rate·K/W.
"""
from __future__ import annotations

import math

import torch

from clipdistill.distributed import gradient_times_world_size, max_across_ranks, sum_across_ranks_local_grad


def shard_rows(num_classes: int, rank: int, world_size: int) -> slice:
    """The contiguous rows of ``num_classes`` that ``rank`` holds (PartialFC's split)."""
    base, extra = divmod(num_classes, world_size)
    start = base * rank + min(rank, extra)
    return slice(start, start + base + int(rank < extra))


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """s·cos θ_k for every class, s·cos(θ_y + m) for the true one (Deng et al. 2019).

    Where θ_y + m would pass π (cos(θ + m) stops decreasing) the usual linear fallback
    cos θ − m·sin m keeps the target logit monotonic in θ. ``labels`` index columns of ``cosine``.
    """
    target = cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    sine = (1.0 - target * target).sqrt()
    with_margin = target * math.cos(margin) - sine * math.sin(margin)
    with_margin = torch.where(target > math.cos(math.pi - margin), with_margin, target - margin * math.sin(margin))
    return scale * cosine.scatter(1, labels[:, None], with_margin)


def sample_classes(labels: torch.Tensor, num_classes: int, num_sampled: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial FC (An et al. 2021): every class present in ``labels`` plus uniformly drawn negatives,
    ``num_sampled`` classes in all, in O(num_sampled) time and memory (no permutation of all K).
    Returns ``(classes, columns)``: the sampled class ids and, per label, its column among them.

    The draw is seeded from the labels themselves, so it is identical on every rank (each rank sees the
    same gathered batch) and on every micro-batch of an accumulated step (the teacher batch is whole),
    which keeps the 2-rank and accumulation equivalences exact; different batches draw differently.
    """
    if num_sampled >= num_classes:
        return torch.arange(num_classes, device=labels.device), labels
    positives = labels.unique()  # sorted, so searchsorted finds each label's column
    wanted = max(0, num_sampled - len(positives))
    key = int((labels.long().cpu() * torch.arange(1, len(labels) + 1)).sum()) * 1_000_003 + len(labels)
    g = torch.Generator().manual_seed(key % (2**63))
    draws = torch.randint(0, num_classes, (2 * wanted + 16,), generator=g).unique()
    draws = draws[~torch.isin(draws, positives.cpu())]
    draws = draws[torch.randperm(len(draws), generator=g)[:wanted]]  # unique() sorted them: reshuffle
    return torch.cat([positives, draws.to(labels.device)]), torch.searchsorted(positives, labels)


def classes_in_shard(classes: torch.Tensor, columns: torch.Tensor, shard: slice,
                     everything: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """This rank's part of a global draw :func:`sample_classes` made.

    Returns the drawn classes inside ``shard`` as shard rows (None when every class was drawn: the
    whole shard, in order, without a copy) and each label's column among them, −1 where another
    rank holds the label.
    """
    if everything:  # classes = arange(K), columns = the labels themselves
        held = (columns >= shard.start) & (columns < shard.stop)
        return None, torch.where(held, columns - shard.start, -1)
    inside = (classes >= shard.start) & (classes < shard.stop)
    position = torch.cumsum(inside, 0) - 1  # a drawn class's column among the kept ones
    return classes[inside] - shard.start, torch.where(inside[columns], position[columns], -1)


def margin_softmax_loss(features: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor, scale: float,
                        margin: float) -> torch.Tensor:
    """Mean over rows of the cross-entropy of s·cos (ArcFace margin on the target) over every rank's centres.

    ``features`` (M, D) unit rows, the same on every rank; ``centres`` (m, D) unit rows, this rank's
    (sampled) shard; ``targets`` (M,) each row's column among them, −1 where another rank holds it.
    On one process this is ``F.cross_entropy(arcface_logits(...))``. Every rank returns the same value.
    """
    cosine = gradient_times_world_size(features) @ centres.t()
    held = targets >= 0
    columns = targets.clamp(min=0)[:, None]
    logits = scale * cosine
    if logits.shape[1]:
        logits = torch.where(held[:, None], arcface_logits(cosine, columns[:, 0], scale, margin), logits)
        row_max = logits.detach().max(dim=1).values
        target = torch.where(held, logits.gather(1, columns)[:, 0], torch.zeros_like(row_max))
    else:  # the draw left this shard nothing: it adds nothing to any sum
        row_max = torch.full((len(features),), -math.inf, device=features.device)
        target = torch.zeros_like(row_max)
    shift = max_across_ranks(row_max)  # a constant: the log-sum-exp's value does not depend on it
    sum_exp = sum_across_ranks_local_grad((logits - shift[:, None]).exp().sum(dim=1))
    target = sum_across_ranks_local_grad(target)
    return (sum_exp.log() + shift - target).mean()
