"""Image semantic balance (CLIP-CID) and SemDeDup: remove semantic near-duplicates, cluster by cluster.

    result = curate(embeddings, mode="cid", clusters=1000, target_removal=0.437)
    np.save("keep.npy", result.keep)

1. Spherical k-means (FAISS; two-level for many clusters) on the unit embeddings; oversized clusters
   are split (``partition``).
2. Inside each group, dense cosine similarities give the duplicate scores of ``duplicates`` once.
3. A threshold t = 1 − ε: given, or chosen so that ``count(score > t)`` removes the target fraction
   (one sort of the scores; no pairwise work is redone per candidate ε).
4. ``cid``: union-find (connected components) over the spanning-forest edges above t; each component
   keeps its member most similar to its k-means centroid. ``semdedup``: rows whose score exceeds t go;
   each duplicate chain keeps its member farthest from the centroid, as SemDeDup does.

Given a ``WorkDir`` (``resume``), steps 1 and 2 are stored as they finish, step 2 in chunks of groups,
and a rerun skips what is stored: ``clipdistill curate`` resumes after a kill.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from clipdistill.curate.duplicates import max_similarity_to_earlier, maximum_spanning_forest
from clipdistill.curate.kmeans import hierarchical_kmeans
from clipdistill.curate.partition import groups_of, split_oversized
from clipdistill.curate.resume import Clustering, WorkDir
from clipdistill.errors import UserError

MODES = ("cid", "semdedup")

log = logging.getLogger("clipdistill.curate")


@dataclass
class CurateResult:
    keep: np.ndarray  # sorted kept row indices, int64
    threshold: float  # ε: pairs with cosine > 1 − ε are duplicates
    labels: np.ndarray  # (N,) k-means cluster of every row
    centroids: np.ndarray  # (K, D)
    scores: np.ndarray  # duplicate scores (see duplicates.py): what the threshold was applied to
    n_total: int
    seconds: float
    timings: dict = field(default_factory=dict)

    @property
    def removal(self) -> float:
        return 1.0 - len(self.keep) / self.n_total


@dataclass
class _Scores:
    """What both rules need after the pairwise pass: scores, plus forest edges (cid) in row ids."""

    values: np.ndarray
    u: np.ndarray | None = None
    v: np.ndarray | None = None


def default_clusters(n: int) -> int:
    """About 500 rows per cluster: dense within-cluster similarity costs N·(N/K)·D, so this sets the
    speed (SemDeDup used 50 000 clusters for 440 M images, ~9 000 each: more recall, far more compute)."""
    return int(max(1, round(n / 500)))


def curate(x: np.ndarray, *, mode: str = "cid", clusters: int | None = None, target_removal: float | None = None,
           threshold: float | None = None, max_cluster_size: int = 2048, iterations: int = 20, seed: int = 0,
           progress: bool = False, work: WorkDir | None = None) -> CurateResult:
    """Curate unit-norm float32 embeddings ``x`` (N, D); exactly one of ``target_removal``/``threshold``.

    With ``work``, finished steps are stored there and stored ones are reused (see ``resume``).
    """
    _check_arguments(mode, target_removal, threshold)
    started, timings = time.time(), {}
    k = clusters or default_clusters(len(x))
    if work is not None:
        work.start(x, {"mode": mode, "clusters": k, "max_cluster_size": max_cluster_size, "iterations": iterations,
                       "seed": seed})
    clustering = work.load_clustering() if work is not None else None
    if clustering is None:
        clustering = _cluster(x, k, max_cluster_size=max_cluster_size, iterations=iterations, seed=seed,
                              progress=progress)
        if work is not None:
            work.save_clustering(clustering)
    timings["kmeans"] = time.time() - started
    mark = time.time()
    scores = _duplicate_scores(x, clustering.groups, clustering.centrality, mode, progress, work)
    timings["pairwise"] = time.time() - mark
    # Chosen from every group's scores at once: the same whether they were computed now or stored.
    t = np.float64(1.0 - threshold) if threshold is not None else pick_threshold(scores.values, target_removal, len(x))
    keep = _keep_cid(scores, t, clustering.centrality) if mode == "cid" else np.flatnonzero(~(scores.values > t))
    return CurateResult(keep=np.sort(keep).astype(np.int64), threshold=float(1.0 - t), labels=clustering.labels,
                        centroids=clustering.centroids, scores=scores.values, n_total=len(x),
                        seconds=time.time() - started, timings=timings)


def _cluster(x, k: int, *, max_cluster_size: int, iterations: int, seed: int, progress: bool) -> Clustering:
    """k-means, then oversized clusters split into the groups that pairwise work runs on."""
    labels, centrality, centroids = hierarchical_kmeans(x, k, iterations=iterations, seed=seed, progress=progress)
    groups = split_oversized(x, groups_of(labels), max_cluster_size, seed=seed)
    return Clustering(labels, centrality, centroids, groups)


def _check_arguments(mode: str, target_removal: float | None, threshold: float | None) -> None:
    if mode not in MODES:
        raise UserError(f"unknown curate mode '{mode}' (available: {', '.join(MODES)})")
    if (target_removal is None) == (threshold is None):
        raise UserError("give exactly one of --target-removal and --threshold")
    if target_removal is not None and not 0.0 <= target_removal < 1.0:
        raise UserError(f"--target-removal must be in [0, 1), got {target_removal}")
    if threshold is not None and not 0.0 <= threshold <= 2.0:
        raise UserError(f"--threshold ε must be in [0, 2] (cosine > 1 − ε), got {threshold}")


def _duplicate_scores(x, groups, centrality, mode: str, progress: bool, work: WorkDir | None) -> _Scores:
    """Every group's scores, a chunk of groups at a time; with ``work``, each chunk is stored once done."""
    size = work.chunk_groups if work is not None else max(1, len(groups))
    chunks, reused = [], 0
    # One BLAS thread: for ~500 × 500 products, threading overhead made them 7x slower on 2 cores (measured).
    with threadpool_limits(1), tqdm(total=len(groups), desc=f"{mode} pairwise", unit="cluster",
                                    disable=not progress) as bar:
        for first in range(0, len(groups), size):
            chunk = work.load_scores(first) if work is not None else None
            reused += chunk is not None
            if chunk is None:
                chunk = _chunk_scores(x, groups[first:first + size], centrality, mode, bar)
                if work is not None:
                    work.save_scores(first, chunk)
            else:
                bar.update(len(groups[first:first + size]))
            chunks.append(chunk)
    if reused:
        log.info("pairwise scores of %d of %d chunks reused from %s", reused, len(chunks), work.path)
    columns = [np.concatenate(column) for column in zip(*chunks)]
    if mode == "cid":
        u, v, w = columns
        return _Scores(w, u, v)
    members, values = columns
    scores = np.full(len(x), -np.inf, dtype=np.float32)
    scores[members] = values
    return _Scores(scores)


def _chunk_scores(x, groups, centrality, mode: str, bar) -> tuple[np.ndarray, ...]:
    """The groups' ``_group_scores``, column by column, in group order."""
    parts = []
    for members in groups:
        parts.append(_group_scores(x, members, centrality, mode))
        bar.update(1)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _group_scores(x, members, centrality, mode: str) -> tuple[np.ndarray, ...]:
    """cid: the group's forest edges as (row u, row v, similarity); semdedup: (rows, score per row)."""
    if mode == "semdedup":
        # Farthest from the centroid first, so each duplicate chain keeps its most peripheral member.
        members = members[np.argsort(centrality[members], kind="stable")]
    points = x[members]
    sim = points @ points.T
    if mode == "semdedup":
        return members, max_similarity_to_earlier(sim)
    u, v, w = maximum_spanning_forest(sim)
    return members[u], members[v], w


def pick_threshold(scores: np.ndarray, fraction: float, n_total: int) -> np.float64:
    """The similarity t for which ``count(scores > t)`` is the closest to ``fraction · n_total``."""
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    n_remove = int(round(fraction * n_total))
    if n_remove == 0:
        return np.float64(finite[0]) if len(finite) else np.float64(1.0)  # nothing above the largest
    if n_remove > len(finite):
        raise UserError(f"target removal {fraction:.3f} is unreachable: at most {len(finite) / n_total:.3f} of the "
                        "rows have a within-cluster neighbour; use fewer --clusters")
    # Thresholds are float64 scalars, so comparing them with float32 scores is exact.
    upper = np.float64(finite[n_remove - 1])
    lower = np.float64(finite[n_remove]) if n_remove < len(finite) else np.float64(-2.0)
    if lower < upper:
        return (upper + lower) / 2
    # Tied scores at the cut: remove all of the tied rows or none of them, whichever lands closer.
    below = np.nextafter(upper, -np.inf)
    too_many, too_few = int((finite > below).sum()) - n_remove, n_remove - int((finite > upper).sum())
    return below if too_many <= too_few else upper


def _keep_cid(scores: _Scores, t: float, centrality: np.ndarray) -> np.ndarray:
    """Union-find over the forest edges above t; each component keeps its most central member."""
    n = len(centrality)
    kept = scores.values > t
    graph = coo_matrix((np.ones(int(kept.sum()), dtype=np.int8), (scores.u[kept], scores.v[kept])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((-centrality, component))  # by component, most central first
    first = np.r_[True, component[order][1:] != component[order][:-1]]
    return order[first]
