"""``clipdistill cluster``: CLIP-CID pseudo-labels from teacher embeddings.

    clipdistill cluster --embeddings img.npy [--text-embeddings txt.npy] --tower image --clusters 1000 --out DIR

Writes ``DIR/labels.npy`` (N,) int64, ``DIR/centroids.npy`` (K, D') (the clustering space),
``DIR/centroids_image.npy`` / ``centroids_text.npy`` (K, D_t) (class centres for the ``cid_cluster``
loss: ``losses.cid_cluster.centroids=DIR/centroids_image.npy``) and ``DIR/clusters.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clipdistill.curate.pseudo_labels import TOWERS, pseudo_labels
from clipdistill.curate.sources import load_unit_embeddings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipdistill cluster", description="k-means pseudo-labels (CLIP-CID) "
                                "from teacher embeddings.")
    p.add_argument("--embeddings", help="(N, D) float .npy of teacher image embeddings")
    p.add_argument("--text-embeddings", help="(N, D) float .npy of teacher text embeddings, same rows")
    p.add_argument("--tower", choices=TOWERS, default="image", help="what to cluster (both = concatenated)")
    p.add_argument("--clusters", type=int, default=1000, help="K (CLIP-CID uses large K, e.g. 10^5 for LAION)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--out", required=True, help="output directory (e.g. next to the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress = not args.no_progress
    started = time.time()
    image = load_unit_embeddings(args.embeddings, progress=progress) if args.embeddings else None
    text = load_unit_embeddings(args.text_embeddings, progress=progress) if args.text_embeddings else None
    result = pseudo_labels(image, text, tower=args.tower, clusters=args.clusters, iterations=args.iterations,
                           seed=args.seed, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", result.labels)
    np.save(out / "centroids.npy", result.centroids)
    for name, centres in result.tower_centroids.items():
        np.save(out / f"centroids_{name}.npy", centres)
    sizes = np.bincount(result.labels, minlength=len(result.centroids))
    summary = {"n": int(len(result.labels)), "clusters": int(len(result.centroids)), "tower": args.tower,
               "embeddings": args.embeddings, "text_embeddings": args.text_embeddings,
               "cluster_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
               "seconds": round(time.time() - started, 2)}
    (out / "clusters.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['n']} samples in {summary['clusters']} clusters (sizes {summary['cluster_size']}) -> {out}")
    return 0
