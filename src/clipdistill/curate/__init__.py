"""Curation: spherical k-means, semantic balance / dedup (CLIP-CID, SemDeDup), pseudo-labels."""
from clipdistill.curate.balance import MODES, CurateResult, curate, pick_threshold
from clipdistill.curate.kmeans import assign_nearest, train_spherical_kmeans

__all__ = ["MODES", "CurateResult", "assign_nearest", "curate", "pick_threshold", "train_spherical_kmeans"]
