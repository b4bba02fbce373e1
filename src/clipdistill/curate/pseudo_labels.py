"""CLIP-CID pseudo-labels: the nearest of K k-means centroids of the teacher's embeddings.

The clustering space is the teacher's image embeddings (CLIP-CID's choice), its text embeddings, or
both: ``[t_v ; t_t] / √2`` (unit length again), so a pair's label reflects image and caption.
Whatever the space, the ``cid_cluster`` loss needs class centres in the teacher's D_t-dimensional
space for each tower: ``tower_centroids`` are the normalized means of each cluster's members' image
(and text) embeddings; for ``tower="image"`` the image ones equal the k-means centroids up to the
last assignment step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdistill.curate.kmeans import hierarchical_kmeans
from clipdistill.errors import UserError

TOWERS = ("image", "text", "both")


@dataclass
class PseudoLabels:
    labels: np.ndarray  # (N,) int64
    centroids: np.ndarray  # (K, D') in the clustering space
    tower_centroids: dict[str, np.ndarray]  # "image"/"text" -> (K, D_t) normalized member means


def clustering_space(image: np.ndarray | None, text: np.ndarray | None, tower: str) -> np.ndarray:
    if tower not in TOWERS:
        raise UserError(f"unknown tower '{tower}' (available: {', '.join(TOWERS)})")
    needed = {"image": [image], "text": [text], "both": [image, text]}[tower]
    if any(part is None for part in needed):
        raise UserError(f"clustering on '{tower}' needs the {tower} embeddings"
                        + (" (--embeddings and --text-embeddings)" if tower == "both" else ""))
    if tower != "both":
        return needed[0]
    if image.shape[0] != text.shape[0]:
        raise UserError(f"image and text embeddings differ in length: {image.shape[0]} vs {text.shape[0]}")
    return np.concatenate([image, text], axis=1) / np.sqrt(2.0, dtype=np.float32)


def member_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Normalized mean of each cluster's rows ``(k, D)`` (an empty cluster gets a zero row)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pseudo_labels(image: np.ndarray | None = None, text: np.ndarray | None = None, *, tower: str = "image",
                  clusters: int = 1000, iterations: int = 20, seed: int = 0, progress: bool = False) -> PseudoLabels:
    """Cluster unit-norm teacher embeddings ``(N, D_t)`` and label every sample with its cluster."""
    space = clustering_space(image, text, tower)
    labels, _, centroids = hierarchical_kmeans(space, clusters, iterations=iterations, seed=seed, progress=progress)
    towers = {name: member_means(x, labels, len(centroids)) for name, x in (("image", image), ("text", text))
              if x is not None}
    return PseudoLabels(labels=labels, centroids=centroids, tower_centroids=towers)
