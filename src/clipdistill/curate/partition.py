"""Cut a k-means clustering into groups small enough for dense pairwise similarity.

All duplicate search happens inside a group, so the pairwise work is Σ n_g² instead of N². A cluster
larger than ``max_size`` is split with a second k-means on its members; a part that is still too
large (a tight blob k-means cannot cut) is chunked in order of similarity to its centroid, which keeps
neighbours together. Duplicates that straddle a split are missed: the price of bounded memory.
"""
from __future__ import annotations

import math

import numpy as np

from clipdistill.curate.kmeans import assign_nearest, train_spherical_kmeans


def groups_of(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each cluster label present, in label order (each group sorted)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [part for part in np.split(order, bounds) if len(part)]


def split_oversized(x: np.ndarray, groups: list[np.ndarray], max_size: int, seed: int = 0) -> list[np.ndarray]:
    """Every group of more than ``max_size`` rows replaced by parts of at most ``max_size`` rows."""
    out: list[np.ndarray] = []
    for members in groups:
        out.extend([members] if len(members) <= max_size else _split(x[members], members, max_size, seed))
    return out


def split_points(points: np.ndarray, max_size: int, seed: int = 0) -> list[np.ndarray]:
    """Positions in ``points`` (one cell's unit rows) cut into parts of at most ``max_size``."""
    everything = np.arange(len(points))
    return [everything] if len(points) <= max_size else _split(points, everything, max_size, seed)


def _split(points: np.ndarray, members: np.ndarray, max_size: int, seed: int) -> list[np.ndarray]:
    k = math.ceil(2 * len(members) / max_size)  # aim at half the limit: k-means parts are uneven
    centroids = train_spherical_kmeans(points, k, seed=seed, iterations=10)
    labels, similarity = assign_nearest(points, centroids)
    parts = []
    for part in groups_of(labels):
        if len(part) <= max_size:
            parts.append(members[part])
            continue
        ordered = part[np.argsort(-similarity[part], kind="stable")]
        parts.extend(members[chunk] for chunk in np.array_split(ordered, math.ceil(len(ordered) / max_size)))
    return parts
