"""cid_cluster: cluster discrimination (CLIP-CID, Yang et al. AAAI 2025, Sec. 3.2)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.registry import register


def load_centroids(centroids: str | Path | torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(K, D_t)`` unit-norm float32 centroids from a ``.npy`` path, a teacher-cache directory (its
    ``cluster`` extra, written by ``clipdistill cluster --embeddings CACHE``), an array or a tensor."""
    if isinstance(centroids, (str, Path)) and Path(centroids).is_dir():
        centroids = _cache_centroids(Path(centroids))
    elif isinstance(centroids, (str, Path)):
        if not Path(centroids).is_file():
            raise UserError(f"cid_cluster centroids file not found: {centroids}")
        centroids = np.load(centroids)
    tensor = torch.as_tensor(np.asarray(centroids) if not torch.is_tensor(centroids) else centroids).float()
    if tensor.ndim != 2 or len(tensor) < 2:
        raise UserError(f"cid_cluster centroids must be (K >= 2, D); got {tuple(tensor.shape)}")
    return F.normalize(tensor, dim=-1)


def _cache_centroids(directory: Path) -> torch.Tensor:
    from clipdistill.cache.extras import read_extras
    from clipdistill.cache.manifest import read_manifest

    extra = read_extras(directory, read_manifest(directory)).get("cluster", {})
    if "centroids" not in extra:
        raise UserError(f"teacher cache {directory} has no cluster centroids: run clipdistill cluster "
                        f"--embeddings {directory} --out DIR first")
    return extra["centroids"]


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


@register("cid_cluster")
class CIDClusterLoss(nn.Module):
    """Classify each projected student embedding into the teacher's k-means cluster, with a margin.

    For each tower x ∈ {image, text}: loss_x = CE(arcface(cos(ŝ_x, c_k)), y), loss = ½(loss_image + loss_text)

    y = the cluster of the pair: ``teacher.extras["cluster"]`` (N,) long if the data provides it, else
    the nearest centroid of the teacher's ``label_tower`` embedding, computed here on the fly (so the
    training loop needs no change). Both towers share y and the centroids c_k (K, D_t): the pair is one
    sample of one semantic cluster. ŝ = normalize(P(s)) (a head per tower when D_s ≠ D_t).
    ``learnable=True`` makes the centroids a Parameter initialized from k-means (labels are then computed
    against the fixed initial centroids, kept as a buffer). ``sample_fraction`` < 1 is partial FC: the
    softmax runs over the batch's own clusters plus random negatives, ⌈fraction·K⌉ classes in all.
    Shapes: student (N, D_s) raw, teacher (N, D_t) normalized.

    Args:
        centroids: ``.npy`` path, teacher-cache directory, array or tensor (K, D_t).
        scale, margin: ArcFace s and m (radians).
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
        label_tower: ``image`` or ``text``: which teacher embedding picks y when no labels are given.
    """

    needs_teacher = True

    def __init__(self, centroids, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, scale: float = 32.0, margin: float = 0.2, learnable: bool = False,
                 sample_fraction: float = 1.0, label_tower: str = "image"):
        super().__init__()
        initial = load_centroids(centroids)
        if teacher_dim is not None and initial.shape[1] != teacher_dim:
            raise UserError(f"cid_cluster centroids have dim {initial.shape[1]}, the teacher {teacher_dim}")
        if not 0.0 < sample_fraction <= 1.0 or label_tower not in ("image", "text"):
            raise UserError("cid_cluster needs 0 < sample_fraction <= 1 and label_tower in (image, text)")
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        self.register_buffer("label_centroids", initial.clone(), persistent=False)
        self.centroids = nn.Parameter(initial.clone()) if learnable else None
        self.scale, self.margin, self.label_tower = scale, margin, label_tower
        self.num_sampled = math.ceil(sample_fraction * len(initial))

    def labels(self, teacher: Embeddings) -> torch.Tensor:
        if "cluster" in teacher.extras:
            return teacher.extras["cluster"].long()
        anchors = teacher.image if self.label_tower == "image" else teacher.text
        return (anchors @ self.label_centroids.t()).argmax(dim=1)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        labels = self.labels(teacher)
        classes, columns = sample_classes(labels, len(self.label_centroids), self.num_sampled)
        weights = self.centroids if self.centroids is not None else self.label_centroids
        weights = F.normalize(weights[classes], dim=-1)
        rows = student.rows
        local = student.with_(image=student.image[rows], text=student.text[rows])
        image, text = self.project(local, teacher)
        return 0.5 * sum(F.cross_entropy(arcface_logits(x @ weights.t(), columns[rows], self.scale, self.margin),
                                         columns[rows]) for x in (image, text))
