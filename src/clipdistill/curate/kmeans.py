"""Spherical k-means with FAISS: train on a sample, assign every row in blocks.

FAISS does the heavy lifting (BLAS, its own threads); we only decide how much data it trains on and
stream the assignment so memory stays at one block of similarities beyond the embeddings themselves.
"""
from __future__ import annotations

import math

import faiss
import numpy as np
from tqdm import tqdm

# FAISS's own advice: more than ~256 training points per centroid adds time, not quality.
POINTS_PER_CENTROID = 256
ASSIGN_BLOCK = 65536
# Above this many clusters, k-means runs in two levels (see hierarchical_kmeans).
FLAT_LIMIT = 512


def train_spherical_kmeans(x: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0,
                           points_per_centroid: int = POINTS_PER_CENTROID) -> np.ndarray:
    """``(k, D)`` float32 unit-norm centroids of the rows of ``x`` (unit-norm float32, ``(N, D)``).

    Trains on a uniform sample of at most ``k * points_per_centroid`` rows, so training time does not
    grow with N. ``k`` is capped at N.
    """
    n, dim = x.shape
    k = max(1, min(int(k), n))
    if k == 1:
        return _unit(x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32))
    sample_size = min(n, k * points_per_centroid)
    rows = np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False)) if sample_size < n else None
    sample = np.ascontiguousarray(x[rows] if rows is not None else x, dtype=np.float32)
    kmeans = faiss.Kmeans(dim, k, niter=iterations, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=points_per_centroid, min_points_per_centroid=1)
    kmeans.train(sample)
    return _unit(kmeans.centroids.astype(np.float32))


def assign_nearest(x: np.ndarray, centroids: np.ndarray, *, progress: bool = False,
                   block: int = ASSIGN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: the index of the most similar centroid and that cosine similarity.

    Returns ``(labels (N,) int64, similarity (N,) float32)``; rows and centroids must be unit-norm.
    """
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(x), dtype=np.int64)
    similarity = np.empty(len(x), dtype=np.float32)
    for start in tqdm(range(0, len(x), block), desc="assign clusters", unit="block", disable=not progress):
        chunk = np.ascontiguousarray(x[start:start + block], dtype=np.float32)
        sims, ids = index.search(chunk, 1)
        labels[start:start + len(chunk)], similarity[start:start + len(chunk)] = ids[:, 0], sims[:, 0]
    return labels, similarity


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def hierarchical_kmeans(x: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About ``k`` spherical k-means clusters, in two levels when ``k`` is large.

    Flat k-means costs N·k·D per assignment pass, which grows as N² when k grows with N. Above
    ``FLAT_LIMIT`` clusters we run ⌈√k⌉ coarse clusters, then split each coarse cluster into a number of
    sub-clusters proportional to its size (total ≈ k): N·2√k·D. Returns ``(labels (N,), similarity to
    the row's centroid (N,), centroids (k', D))``.
    """
    if k <= FLAT_LIMIT:
        centroids = train_spherical_kmeans(x, k, iterations=iterations, seed=seed)
        labels, similarity = assign_nearest(x, centroids, progress=progress)
        return labels, similarity, centroids
    coarse = train_spherical_kmeans(x, math.ceil(math.sqrt(k)), iterations=iterations, seed=seed)
    coarse_labels, _ = assign_nearest(x, coarse, progress=progress)
    labels = np.empty(len(x), dtype=np.int64)
    similarity = np.empty(len(x), dtype=np.float32)
    order = np.argsort(coarse_labels, kind="stable")
    bounds = np.flatnonzero(np.diff(coarse_labels[order])) + 1
    centroids = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # sub-problems are small: OpenMP start-up costs more than it saves (5x, measured)
    try:
        for members in tqdm(np.split(order, bounds), desc="sub-clusters", unit="cluster", disable=not progress):
            points = x[members]
            sub = train_spherical_kmeans(points, max(1, round(k * len(members) / len(x))), iterations=iterations,
                                         seed=seed)
            sub_labels, similarity[members] = assign_nearest(points, sub)
            labels[members] = sub_labels + sum(len(c) for c in centroids)
            centroids.append(sub)
    finally:
        faiss.omp_set_num_threads(threads)
    return labels, similarity, np.concatenate(centroids)


def train_cells(sample: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0,
                progress: bool = False) -> np.ndarray:
    """``(k', D)`` unit centroids trained on ``sample`` only (flat, or two levels above ``FLAT_LIMIT``)."""
    return hierarchical_kmeans(sample, k, iterations=iterations, seed=seed, progress=progress)[2]


class NearestCells:
    """The two most similar centroids of each row: exact for up to ``FLAT_LIMIT`` centroids, else an
    inverted file over the centroids themselves (√K coarse lists, ``probes`` of them searched), so a
    row costs ~(√K + probes·√K)·D instead of K·D. Deterministic for given centroids."""

    def __init__(self, centroids: np.ndarray, *, probes: int = 3, seed: int = 0):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        k, dim = centroids.shape
        if k <= FLAT_LIMIT:
            self.index = faiss.IndexFlatIP(dim)
        else:
            lists = math.ceil(math.sqrt(k))
            coarse = train_spherical_kmeans(centroids, lists, seed=seed, points_per_centroid=64)
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(coarse)
            self.index = faiss.IndexIVFFlat(quantizer, dim, len(coarse), faiss.METRIC_INNER_PRODUCT)
            self.index.is_trained = True
            self.index.nprobe = min(probes, len(coarse))
            self._quantizer = quantizer  # the index does not own it
        self.index.add(centroids)
        self._centroids = centroids
        self.k = k

    def search(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(cells (n, 2) int64, similarity (n, 2) float32)``; second column -1 / -inf if K = 1."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        sims, ids = self.index.search(rows, min(2, self.k))
        missed = np.flatnonzero(ids[:, -1] < 0)  # the probed lists held fewer than two centroids
        if len(missed):
            exact = faiss.IndexFlatIP(rows.shape[1])
            exact.add(self._centroids)
            sims[missed], ids[missed] = exact.search(rows[missed], min(2, self.k))
        if self.k == 1:
            ids = np.c_[ids, np.full(len(ids), -1)]
            sims = np.c_[sims, np.full(len(sims), -np.inf, dtype=np.float32)]
        return ids.astype(np.int64), sims
