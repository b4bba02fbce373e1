"""``clipdistill cluster``: CLIP-CID pseudo-labels from teacher embeddings.

    clipdistill cluster --embeddings img.npy [--text-embeddings txt.npy] --tower image --clusters 1000 --out DIR
    clipdistill cluster --embeddings runs/cache --tower image|text|both --clusters 1000 --out DIR

Writes ``DIR/labels.npy`` (N,) int64 (one per input row; for a cache, per cache row), ``DIR/centroids.npy``
(K, D') (the clustering space), ``DIR/centroids_image.npy`` / ``centroids_text.npy`` (K, D_t) (class
centres for the ``cid_cluster`` loss: ``losses.cid_cluster.centroids=DIR/centroids_image.npy``) and
``DIR/clusters.json``. Given a teacher cache, it also stores the labels in the cache as its ``cluster``
extra (with the image class centres as ``centroids``), so a run with ``teacher.source=cache`` feeds
them to ``cid_cluster`` as ``Embeddings.extras["cluster"]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clipdistill.atomic import ensure_writable_dir, write_atomic, write_text_atomic
from clipdistill.curate.pseudo_labels import TOWERS, PseudoLabels, pseudo_labels
from clipdistill.curate.sources import is_cache, load_unit_embeddings, read_cache
from clipdistill.errors import UserError

EXTRA = "cluster"  # the extra name CachedTeacherTargets passes on and the cid_cluster loss reads


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipdistill cluster", description="k-means pseudo-labels (CLIP-CID) "
                                "from teacher embeddings.")
    p.add_argument("--embeddings", help="(N, D) float .npy of teacher image embeddings, or a teacher-cache "
                   "directory (clipdistill cache: image view 0 and text; the labels are also stored in it)")
    p.add_argument("--text-embeddings", help="(N, D) float .npy of teacher text embeddings, same rows "
                   "(not with a cache, which holds them)")
    p.add_argument("--tower", choices=TOWERS, default="image", help="what to cluster (both = concatenated)")
    p.add_argument("--clusters", type=int, default=1000, help="K (CLIP-CID uses large K, e.g. 10^5 for LAION)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--out", required=True, help="output directory (e.g. next to the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def from_cache(args, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image, text)`` unit embeddings of the teacher cache ``--embeddings`` (text None unless clustered)."""
    if args.text_embeddings:
        raise UserError("--text-embeddings cannot be combined with a teacher cache: the cache holds the text "
                        "embeddings (use --tower text or both)")
    # Text only when clustered: a float32 copy of a tower is 4·N·D bytes. Image always, since the
    # extra's centroids must be image-space (hybrid training labels live rows from their image).
    embeddings = read_cache(args.embeddings, text=args.tower != "image", progress=progress)
    return embeddings.image, embeddings.text


def from_files(args, progress: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(image, text)`` unit embeddings of the .npy files given (either may be None)."""
    image = load_unit_embeddings(args.embeddings, progress=progress) if args.embeddings else None
    text = load_unit_embeddings(args.text_embeddings, progress=progress) if args.text_embeddings else None
    return image, text


def store_in_cache(directory: str, result: PseudoLabels, tower: str) -> None:
    """The labels as the cache's ``cluster`` extra (cache row order, as read), with the image class centres."""
    import torch

    from clipdistill.cache.extras import write_extra

    k, dim = result.tower_centroids["image"].shape
    description = (f"CLIP-CID pseudo-labels (clipdistill cluster): k-means of the teacher's {tower} embeddings "
                   f"(image view 0), K={k}; centroids: ({k}, {dim}) normalized image means of each cluster")
    write_extra(directory, EXTRA, torch.from_numpy(result.labels), description,
                centroids=torch.from_numpy(result.tower_centroids["image"]))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress = not args.no_progress
    started = time.time()
    cache = args.embeddings is not None and is_cache(args.embeddings)
    ensure_writable_dir(args.out)  # before k-means: every output location is checked first
    if cache:  # the labels are stored into the cache as well
        ensure_writable_dir(args.embeddings, what="cache directory")
    image, text = from_cache(args, progress) if cache else from_files(args, progress)
    result = pseudo_labels(image, text, tower=args.tower, clusters=args.clusters, iterations=args.iterations,
                           seed=args.seed, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "labels.npy", lambda file: np.save(file, result.labels))
    write_atomic(out / "centroids.npy", lambda file: np.save(file, result.centroids))
    for name, centres in result.tower_centroids.items():
        write_atomic(out / f"centroids_{name}.npy", lambda file, centres=centres: np.save(file, centres))
    sizes = np.bincount(result.labels, minlength=len(result.centroids))
    summary = {"n": int(len(result.labels)), "clusters": int(len(result.centroids)), "tower": args.tower,
               "embeddings": args.embeddings, "text_embeddings": args.text_embeddings,
               "cluster_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
               "seconds": round(time.time() - started, 2)}
    if cache:
        store_in_cache(args.embeddings, result, args.tower)
        summary["cache_extra"] = EXTRA
    write_text_atomic(out / "clusters.json", json.dumps(summary, indent=2))
    print(f"{summary['n']} samples in {summary['clusters']} clusters (sizes {summary['cluster_size']}) -> {out}")
    return 0
