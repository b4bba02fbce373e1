"""cid_cluster: cluster discrimination (CLIP-CID, Yang et al. AAAI 2025, Sec. 3.2)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdistill import distributed
from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.heads import TeacherSpaceProjection
from clipdistill.losses.partial_fc import classes_in_shard, margin_softmax_loss, sample_classes, shard_rows
from clipdistill.losses.registry import register


def load_centroids(centroids: str | Path | torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(K, D_t)`` unit-norm float32 centroids from a ``.npy`` path, a teacher-cache directory (its
    ``cluster`` extra, written by ``clipdistill cluster --embeddings CACHE``), an array or a tensor."""
    return _unit_rows(_centroid_rows(centroids)[:])


def _centroid_rows(centroids):
    """The (K, D) centroids as rows to slice: a ``.npy`` is memory-mapped, so a rank reads its shard only."""
    if isinstance(centroids, (str, Path)) and Path(centroids).is_dir():
        centroids = _cache_centroids(Path(centroids))
    elif isinstance(centroids, (str, Path)):
        if not Path(centroids).is_file():
            raise UserError(f"cid_cluster centroids file not found: {centroids}")
        centroids = np.load(centroids, mmap_mode="r")
    elif not (torch.is_tensor(centroids) or isinstance(centroids, np.ndarray)):
        centroids = np.asarray(centroids)
    if centroids.ndim != 2 or len(centroids) < 2:
        raise UserError(f"cid_cluster centroids must be (K >= 2, D); got {tuple(centroids.shape)}")
    return centroids


def _unit_rows(rows) -> torch.Tensor:
    tensor = rows if torch.is_tensor(rows) else torch.as_tensor(np.array(rows))
    return F.normalize(tensor.float(), dim=-1)


def _cache_centroids(directory: Path) -> torch.Tensor:
    from clipdistill.cache.extras import read_extras
    from clipdistill.cache.manifest import read_manifest

    extra = read_extras(directory, read_manifest(directory)).get("cluster", {})
    if "centroids" not in extra:
        raise UserError(f"teacher cache {directory} has no cluster centroids: run clipdistill cluster "
                        f"--embeddings {directory} --out DIR first")
    return extra["centroids"]


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

    **Centres sharded across ranks** (PartialFC, :mod:`clipdistill.losses.partial_fc`): under W ranks
    each rank holds its contiguous K/W rows of the centroids (and of the label centroids), listed in
    ``rank_shards``: DDP ignores them (no broadcast, no all-reduce: their gradient is this rank's own),
    the optimizer keeps their moments per rank without weight decay, checkpoints store them per rank.
    Every rank classifies every row of the gathered batch against its shard (``local_loss`` does not
    split this term's rows: its logits are already split by class), and the softmax is combined across
    ranks exactly. One rank holds all K rows: the loss as before sharding.

    Args:
        centroids: ``.npy`` path (memory-mapped: a rank reads its rows only), teacher-cache directory,
            array or tensor (K, D_t).
        scale, margin: ArcFace s and m (radians).
        student_dim, teacher_dim, always_project: projection heads, as in ``fd``.
        label_tower: ``image`` or ``text``: which teacher embedding picks y when no labels are given;
            ``data``: the data always gives them (a teacher cache's ``cluster`` extra), so learnable
            centres keep no second, fixed copy of their shard for labelling (one shard copy less per rank).
    """

    needs_teacher = True
    rank_shards = ("label_centroids", "centroids")  # each rank holds its own rows (distributed.rank_shard_names)

    def __init__(self, centroids, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, scale: float = 32.0, margin: float = 0.2, learnable: bool = False,
                 sample_fraction: float = 1.0, label_tower: str = "image"):
        super().__init__()
        rows = _centroid_rows(centroids)
        if teacher_dim is not None and rows.shape[1] != teacher_dim:
            raise UserError(f"cid_cluster centroids have dim {rows.shape[1]}, the teacher {teacher_dim}")
        if not 0.0 < sample_fraction <= 1.0 or label_tower not in ("image", "text", "data"):
            raise UserError("cid_cluster needs 0 < sample_fraction <= 1 and label_tower in (image, text, data)")
        world = distributed.world_size()
        if len(rows) < world:
            raise UserError(f"cid_cluster has {len(rows)} centroids, fewer than the {world} ranks that shard them")
        self.num_classes = len(rows)
        self.shard = shard_rows(self.num_classes, distributed.rank(), world)
        initial = _unit_rows(rows[self.shard])
        self.project = TeacherSpaceProjection(student_dim, teacher_dim, always_project)
        labelling = not (learnable and label_tower == "data")  # fixed centres are the weights too
        self.register_buffer("label_centroids", initial if labelling else None, persistent=False)
        self.centroids = (nn.Parameter(initial.clone() if labelling else initial)) if learnable else None
        self.scale, self.margin, self.label_tower = scale, margin, label_tower
        self.num_sampled = math.ceil(sample_fraction * self.num_classes)

    def labels(self, teacher: Embeddings) -> torch.Tensor:
        if "cluster" in teacher.extras:
            return teacher.extras["cluster"].long()
        if self.label_tower == "data":
            raise UserError("cid_cluster label_tower=data needs the data's cluster labels: a teacher cache with "
                            "a cluster extra (clipdistill cluster --embeddings CACHE), teacher.source=cache")
        anchors = teacher.image if self.label_tower == "image" else teacher.text
        return distributed.argmax_across_ranks(anchors @ self.label_centroids.t(), offset=self.shard.start)

    def forward(self, student: Embeddings, teacher: Embeddings) -> torch.Tensor:
        labels = self.labels(teacher)
        classes, columns = sample_classes(labels, self.num_classes, self.num_sampled)
        drawn, targets = classes_in_shard(classes, columns, self.shard,
                                          everything=self.num_sampled >= self.num_classes)
        centres = self.centroids if self.centroids is not None else self.label_centroids
        centres = F.normalize(centres if drawn is None else centres[drawn], dim=-1)
        image, text = self.project(student, teacher)  # every row, whatever student.rows says (see above)
        # Both towers in one softmax pass: the mean over their 2N rows is ½(loss_image + loss_text).
        return margin_softmax_loss(torch.cat([image, text]), centres, torch.cat([targets, targets]),
                                   self.scale, self.margin)
