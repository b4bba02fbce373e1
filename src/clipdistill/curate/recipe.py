"""The CLIP-CID data pipeline on a training subset: teacher embeddings → balanced keep list → cluster centres.

    cid = prepare_cid_data(teacher, dataset, rows=2000, out_dir="runs/x/cid")
    losses = cid_losses(cid.centroids)          # clip + cid_cluster + cid_instance
    train with data.subset=2000 data.keep=<cid.keep>

Shared by ``clipdistill demo`` and ``bench/ablation.py``. ``space`` is what curation compares:
``image`` (CLIP-CID) or ``both`` (image ⊕ caption), which a dataset with several captions per image
needs, or its rows of one image would all be "duplicates" of each other. ``random_keep`` is a
uniformly random subset of the same size: the control the paper compares the balanced subset with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_text_atomic
from clipdistill.curate.balance import curate
from clipdistill.curate.pseudo_labels import clustering_space, pseudo_labels
from clipdistill.curate.report import write_report
from clipdistill.curate.teacher_embeddings import embed_pairs


@dataclass
class CIDData:
    keep: Path  # balanced keep list (rows of the dataset)
    random_keep: Path  # random rows, as many as ``keep``
    centroids: Path  # (K, D_t) image-space cluster centres for cid_cluster
    report: dict  # curation report (n_total, n_kept, removal, threshold, clusters, seconds)


def cid_losses(centroids: str | Path, cluster_weight: float = 1.0, instance_weight: float = 1.0) -> dict:
    """CLIP-CID's objective: task loss + cluster discrimination + instance discrimination."""
    return {"clip": {"weight": 1.0}, "cid_cluster": {"weight": cluster_weight, "centroids": str(centroids)},
            "cid_instance": {"weight": instance_weight}}


def prepare_cid_data(teacher, dataset, *, rows: int, out_dir: str | Path, target_removal: float = 0.437,
                     label_clusters: int = 64, space: str = "image", seed: int = 0, progress: bool = False) -> CIDData:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, text = embed_pairs(teacher, dataset, rows, progress=progress)
    np.save(out / "teacher_image.npy", image)
    np.save(out / "teacher_text.npy", text)
    result = curate(clustering_space(image, text, space), mode="cid", target_removal=target_removal, seed=seed)
    report = write_report(result, out / "curated", mode="cid", extra={"space": space})
    random_keep = np.sort(np.random.default_rng(seed).choice(rows, len(result.keep), replace=False))
    np.save(out / "random_keep.npy", random_keep.astype(np.int64))
    labels = pseudo_labels(image, text, tower="image", clusters=label_clusters, seed=seed)
    np.save(out / "centroids_image.npy", labels.tower_centroids["image"])
    write_text_atomic(out / "cid.json", json.dumps({"curation": report, "label_clusters": label_clusters}, indent=2))
    return CIDData(keep=out / "curated" / "keep.npy", random_keep=out / "random_keep.npy",
                   centroids=out / "centroids_image.npy", report=report)
