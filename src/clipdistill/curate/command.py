"""``clipdistill curate``: semantic balance (CLIP-CID) or SemDeDup of an embedding file or a teacher cache.

    clipdistill curate --embeddings emb.npy --out curated/ --threshold 0.05 --workers 8
    clipdistill curate --embeddings runs/cache --out curated/          # a clipdistill cache directory
    torchrun --nnodes 8 --nproc-per-node 1 ... -m clipdistill.cli curate --embeddings ... --out SHARED/curated
    clipdistill train my.yaml --out runs/x data.keep=curated/keep.npy

Out of core (``balance``): the input is read in chunks and cells, never whole. Under torchrun each
rank takes its share of the cells (``--out`` on a file system every rank sees); rank 0 writes the outputs.
A cache is curated at the image level: one row per stored image, and every caption row of a kept image
stays in the keep list.

``keep.npy`` names what training filters by: dataset rows (a ``.npy``'s rows are taken to be dataset rows;
a cache's rows, in shard order without bad samples, are mapped to the dataset positions it recorded), or,
for a cache of WebDataset shards, the kept samples' keys (sorted strings; ``data.keep`` on shards reads them).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipdistill.atomic import ensure_writable_dir
from clipdistill.curate.balance import MODES, PROBE_MARGIN, curate
from clipdistill.curate.report import write_report
from clipdistill.curate.resume import WorkDir
from clipdistill.curate.select import SURVIVORS
from clipdistill.curate.sources import CacheImages, open_rows
from clipdistill.curate.world import ranks
from clipdistill.errors import UserError

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
    how.add_argument("--threshold", type=float, help="ε: pairs with cosine > 1 − ε are duplicates (CLIP-CID's "
                     "way; its 43.7 %% on LAION was an outcome, not a target)")
    p.add_argument("--survivor", choices=SURVIVORS, default="group_mean", help="cid: which member of a duplicate "
                   "group stays: nearest the group's mean (CLIP-CID) or most similar to its k-means centroid")
    p.add_argument("--max-cluster-size", type=int, default=2048, help="larger clusters are split")
    p.add_argument("--probe-margin", type=float, default=PROBE_MARGIN, help="a row whose second-nearest centroid "
                   "is within this cosine of its nearest is also compared in that cell (0: never)")
    p.add_argument("--kmeans-sample", type=int, default=0, help="rows k-means trains on (default max(100 000, 8 K))")
    p.add_argument("--workers", type=int, default=1, help="processes for the duplicate pass (per rank)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ensure_writable_dir(args.out)  # before reading embeddings and clustering them
    progress = not args.no_progress
    if args.workers < 1 or args.kmeans_sample < 0 or args.probe_margin < 0:
        raise UserError("--workers must be >= 1, --kmeans-sample and --probe-margin >= 0")
    # Neither given: the paper's 43.7 %.
    target = None if args.threshold is not None else args.target_removal if args.target_removal is not None else 0.437
    source = open_rows(args.embeddings)
    # Killed, the same command continues from what this directory holds (see curate/resume.py).
    work = WorkDir(Path(args.out) / ".work")
    with ranks() as (rank, world, barrier):
        result = curate(source, mode=args.mode, clusters=args.clusters or None, target_removal=target,
                        threshold=args.threshold, max_cluster_size=args.max_cluster_size, seed=args.seed,
                        survivor=args.survivor, probe_margin=args.probe_margin,
                        kmeans_sample=args.kmeans_sample or None, workers=args.workers, rank=rank, world=world,
                        barrier=barrier, progress=progress and rank == 0, work=work)
    if result is None:
        return 0  # not rank 0: its share is stored, rank 0 writes the outputs
    keep = source.names_of_images(result.keep) if isinstance(source, CacheImages) else None
    extra = {"embeddings": str(args.embeddings), "survivor": args.survivor, "world": world, "workers": args.workers}
    if keep is not None:
        extra.update(images=source.n, rows=len(source.image_of_row), rows_kept=len(keep))
    report = write_report(result, args.out, mode=args.mode, keep=keep, extra=extra)
    work.remove()  # only once every output is written: until then a rerun still resumes
    print(f"kept {report['n_kept']} of {report['n_total']} rows (removed {100 * report['removal']:.1f} %, "
          f"ε = {report['threshold']:.4f}, {report['clusters']} clusters) in {report['seconds']:.1f} s -> {args.out}")
    return 0
