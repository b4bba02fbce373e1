"""``clipdistill curate``: semantic balance (CLIP-CID) or SemDeDup of an embedding file or a teacher cache.

    clipdistill curate --embeddings emb.npy --out curated/ --target-removal 0.437
    clipdistill curate --embeddings runs/cache --out curated/          # a clipdistill cache directory
    clipdistill train my.yaml --out runs/x data.keep=curated/keep.npy

``keep.npy`` names what training filters by: dataset rows (a ``.npy``'s rows are taken to be dataset rows;
a cache's rows, in shard order without bad samples, are mapped to the dataset positions it recorded), or,
for a cache of WebDataset shards, the kept samples' keys (sorted strings; ``data.keep`` on shards reads them).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from clipdistill.atomic import ensure_writable_dir
from clipdistill.curate.balance import MODES, curate
from clipdistill.curate.report import write_report
from clipdistill.curate.resume import WorkDir
from clipdistill.curate.sources import is_cache, load_unit_embeddings, read_cache

log = logging.getLogger("clipdistill.curate")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipdistill curate", description="Remove semantic near-duplicates, "
                                "cluster by cluster; writes DIR/keep.npy, DIR/report.json, DIR/report.png.")
    p.add_argument("--embeddings", required=True, help="(N, D) float .npy of (teacher image) embeddings, in "
                   "dataset row order, or a teacher-cache directory (clipdistill cache; its image view 0 is used)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--mode", choices=MODES, default="cid",
                   help="cid: transitive groups keep their most central member; semdedup: SemDeDup's rule")
    p.add_argument("--clusters", type=int, default=0, help="k-means clusters (default: N / 500)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--target-removal", type=float, help="fraction of rows to remove (default 0.437)")
    how.add_argument("--threshold", type=float, help="ε: pairs with cosine > 1 − ε are duplicates")
    p.add_argument("--max-cluster-size", type=int, default=2048, help="larger clusters are split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def load_input(path: str, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The unit embeddings to curate and, for a teacher cache, what a keep list calls each of them (its
    dataset row or sample key); None for a .npy, whose rows are dataset rows."""
    if not is_cache(path):
        return load_unit_embeddings(path, progress=progress), None
    cache = read_cache(path, progress=progress)
    return cache.image, cache.row_names()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ensure_writable_dir(args.out)  # before reading embeddings and clustering them
    progress = not args.no_progress
    # Neither given: the paper's 43.7 %.
    target = None if args.threshold is not None else args.target_removal if args.target_removal is not None else 0.437
    x, row_names = load_input(args.embeddings, progress)
    # Killed, the same command continues from what this directory holds (see curate/resume.py).
    work = WorkDir(Path(args.out) / ".work", source=args.embeddings)
    result = curate(x, mode=args.mode, clusters=args.clusters or None, target_removal=target, threshold=args.threshold,
                    max_cluster_size=args.max_cluster_size, seed=args.seed, progress=progress, work=work)
    keep = None if row_names is None else np.sort(row_names[result.keep])
    report = write_report(result, args.out, mode=args.mode, keep=keep, extra={"embeddings": str(args.embeddings)})
    work.remove()  # only once every output is written: until then a rerun still resumes
    print(f"kept {report['n_kept']} of {report['n_total']} rows (removed {100 * report['removal']:.1f} %, "
          f"ε = {report['threshold']:.4f}, {report['clusters']} clusters) in {report['seconds']:.1f} s -> {args.out}")
    return 0
