"""The CLIP-CID data pipeline on a training subset, through the real commands: ``cache → curate → cluster``.

    cid = prepare_cid_data(subset_config, out_dir="runs/x/cid")   # teacher + data sections of the subset
    losses = cid_losses(cid.centroids)                           # clip + cid_cluster + cid_instance
    train with data.subset=2000 data.keep=<cid.keep>

which is what these commands do (shared by ``clipdistill demo`` and ``bench/ablation.py``)::

    clipdistill cache SUBSET.yaml --out DIR/cache cache.views=1 'data.scale=[1.0,1.0]'
    clipdistill curate --embeddings DIR/cache --out DIR/curated --target-removal 0.437   # or --threshold ε
    clipdistill cluster --embeddings DIR/cache --tower image --clusters 64 --out DIR

The cache holds one view per sample, the whole image (crop scale 1): curation compares images, not
crops of them. ``space`` is what curation compares: ``image`` (CLIP-CID) or ``both`` (image ⊕
caption, unit length), which a dataset with several captions per image needs, or the rows of one
image would all be "duplicates" of each other; ``both`` is curated from a ``.npy`` of those rows.
``random_keep`` is a uniformly random subset of the same size (in images with all their captions when
curation is in image space): the control the paper compares with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_text_atomic
from clipdistill.curate import cluster_command, command as curate_command
from clipdistill.curate.pseudo_labels import clustering_space
from clipdistill.curate.sources import CacheImages, read_cache
from clipdistill.errors import UserError


@dataclass
class CIDData:
    keep: Path  # balanced keep list (rows of the dataset)
    random_keep: Path  # random rows: as many images (image space) or rows (both) as ``keep``
    centroids: Path  # (K, D_t) image-space cluster centres for cid_cluster
    report: dict  # curation report (n_total, n_kept, removal, threshold, clusters, seconds)


def cid_losses(centroids: str | Path, cluster_weight: float = 1.0, instance_weight: float = 1.0) -> dict:
    """CLIP-CID's objective: task loss + cluster discrimination + instance discrimination."""
    return {"clip": {"weight": 1.0}, "cid_cluster": {"weight": cluster_weight, "centroids": str(centroids)},
            "cid_instance": {"weight": instance_weight}}


def prepare_cid_data(subset_config, *, out_dir: str | Path, target_removal: float = 0.437, threshold: float | None = None,
                     label_clusters: int = 64, space: str = "image", seed: int = 0, progress: bool = False) -> CIDData:
    """Embed the subset ``subset_config`` describes (its ``teacher`` and ``data`` sections: every row of
    its dataset), balance it and cluster it. Every output lands in ``out_dir``. ``threshold`` (ε, CLIP-CID's
    own setting) replaces ``target_removal`` when given."""
    from clipdistill.cache.command import build_cache  # torch and the models, only when a cache is written

    out = Path(out_dir)
    cache = out / "cache"
    build_cache(whole_image_views(subset_config), str(cache))
    quiet = [] if progress else ["--no-progress"]
    cached = read_cache(cache, text=space == "both")
    how = ["--threshold", repr(threshold)] if threshold is not None else ["--target-removal", str(target_removal)]
    curate_command.main(["--embeddings", _curation_input(cached, space, out), "--out", str(out / "curated"),
                         *how, "--seed", str(seed), *quiet])
    cluster_command.main(["--embeddings", str(cache), "--tower", "image", "--clusters", str(label_clusters),
                          "--out", str(out), "--seed", str(seed), *quiet])
    report = json.loads((out / "curated" / "report.json").read_text())
    np.save(out / "random_keep.npy", random_subset(cache, cached.dataset_rows, report["n_kept"], space, seed))
    write_text_atomic(out / "cid.json", json.dumps({"curation": report, "label_clusters": label_clusters,
                                                    "space": space}, indent=2))
    return CIDData(keep=out / "curated" / "keep.npy", random_keep=out / "random_keep.npy",
                   centroids=out / "centroids_image.npy", report=report)


def random_subset(cache: Path, rows: np.ndarray, kept: int, space: str, seed: int) -> np.ndarray:
    """The control: as many units as curation kept, drawn uniformly. In image space curation keeps images
    with all their captions, so the control draws ``kept`` images and keeps all their rows (several
    captions per image: drawing ``kept`` rows would give it a fifth of the balanced subset's rows)."""
    rng = np.random.default_rng(seed)
    if space == "image":
        images = CacheImages(cache)
        return images.names_of_images(rng.choice(images.n, kept, replace=False)).astype(np.int64)
    return np.sort(rng.choice(rows, kept, replace=False)).astype(np.int64)


def whole_image_views(config):
    """``config`` with one stored view per sample, the whole image (crop scale 1)."""
    return dataclasses.replace(config, cache=dataclasses.replace(config.cache, views=1),
                               data=dataclasses.replace(config.data, scale=[1.0, 1.0]))


def _curation_input(cached, space: str, out: Path) -> str:
    """The cache itself (image space), or a ``.npy`` of image ⊕ caption rows in dataset order."""
    if space == "image":
        return str(cached.directory)
    if not np.array_equal(cached.dataset_rows, np.arange(len(cached.dataset_rows))):
        raise UserError(f"curating image and caption together needs every dataset row in the cache, in order; "
                        f"{cached.directory} skipped some (bad samples)")
    path = out / "teacher_image_text.npy"
    np.save(path, clustering_space(cached.image, cached.text, space))
    return str(path)
