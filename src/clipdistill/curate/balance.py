"""Image semantic balance (CLIP-CID) and SemDeDup: remove semantic near-duplicates, out of core.

    result = curate(embeddings, mode="cid", threshold=0.05)           # an array, a .npy, a RowSource
    np.save("keep.npy", result.keep)

1. Spherical k-means (FAISS) trained on a sample of ``kmeans_sample`` rows (two levels above 512
   cells); the centroids are all that stays in memory.
2. The rows stream past in chunks: each gets its nearest cell and, when its second-nearest is within
   ``probe_margin`` (cosine), also that one as a *guest*. The per-cell member lists are spilled to disk
   (``resume.WorkDir``), grouped into batches of cells.
3. The duplicate pass (``cells``) runs batch by batch: in ``workers`` processes, and across ranks
   (each rank its share of the batches). A cell's dense similarities are the only pairwise work.
4. The merge (``select``): one maximum spanning forest of every batch's edges, the threshold t = 1 − ε
   (given, or chosen so that the target fraction goes), union-find groups over the pairs above t, one
   survivor per group. ``semdedup``: each row's score against earlier rows of its cell.

Peak memory: the centroids, one chunk, the largest cell, the k-means sample; the merge holds the
forest's edges (~12 bytes a row) and a few bytes a row of bookkeeping. Everything is stored as it is
finished: a killed run, rerun with the same work directory, continues and keeps the same rows.
"""
from __future__ import annotations

import math
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from clipdistill.curate.cells import run_batches
from clipdistill.curate.kmeans import NearestCells, train_cells
from clipdistill.curate.resume import HOME, RECORD, WorkDir, batch_rows
from clipdistill.curate.select import SURVIVORS, global_forest, groups_above, survivors
from clipdistill.curate.sources import BLOCK, ArrayRows, RowSource
from clipdistill.errors import UserError

MODES = ("cid", "semdedup")
# Cosine gap between a row's nearest and second-nearest centroid within which it is also compared in
# the second cell. 0.02 reaches the 97 % target on the planted set (docs/clip_cid.md, bench/curate.py).
PROBE_MARGIN = 0.02


@dataclass
class CurateResult:
    keep: np.ndarray  # sorted kept row indices, int64
    threshold: float  # ε: pairs with cosine > 1 − ε are duplicates
    centroids: np.ndarray  # (K, D)
    cluster_sizes: np.ndarray  # (K,) rows whose nearest centroid is each
    cluster_kept: np.ndarray  # (K,) of which kept
    scores: np.ndarray  # duplicate scores (see duplicates.py): what the threshold was applied to
    n_total: int
    seconds: float
    timings: dict = field(default_factory=dict)
    probed: float = 0.0  # fraction of rows also compared in their second-nearest cell
    peak_mb: dict = field(default_factory=dict)  # this process's peak resident memory after each phase

    @property
    def removal(self) -> float:
        return 1.0 - len(self.keep) / self.n_total


def default_clusters(n: int) -> int:
    """About 500 rows per cluster: dense within-cluster similarity costs N·(N/K)·D, so this sets the
    speed (SemDeDup used 50 000 clusters for 440 M images, ~9 000 each: more recall, far more compute)."""
    return int(max(1, round(n / 500)))


def default_sample(k: int) -> int:
    """k-means training rows: 100 000 (a constant, so memory does not grow with N), or 8 a centroid.

    Cells only need to be compact neighbourhoods, not converged k-means: uneven ones are split, and
    multi-probe covers their boundaries."""
    return max(100_000, 8 * k)


def curate(x, *, mode: str = "cid", clusters: int | None = None, target_removal: float | None = None,
           threshold: float | None = None, max_cluster_size: int = 2048, iterations: int = 20, seed: int = 0,
           survivor: str = "group_mean", probe_margin: float = PROBE_MARGIN, kmeans_sample: int | None = None,
           workers: int = 1, rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
           progress: bool = False, work: WorkDir | None = None) -> CurateResult | None:
    """Curate the rows of ``x`` (an (N, D) array or a :class:`RowSource`); exactly one of
    ``target_removal``/``threshold``. With ``work``, parts are stored there and stored ones reused;
    without, a temporary directory holds them. With ``world`` > 1 every rank calls this with the same
    arguments and work directory (shared file system) and ``barrier``; rank 0 returns the result, the
    others None."""
    _check_arguments(mode, target_removal, threshold, survivor, world)
    source = x if isinstance(x, RowSource) else ArrayRows(np.asarray(x))
    if work is None:
        with tempfile.TemporaryDirectory(prefix="curate-") as tmp:
            return curate(source, mode=mode, clusters=clusters, target_removal=target_removal, threshold=threshold,
                          max_cluster_size=max_cluster_size, iterations=iterations, seed=seed, survivor=survivor,
                          probe_margin=probe_margin, kmeans_sample=kmeans_sample, workers=workers, progress=progress,
                          work=WorkDir(Path(tmp) / "work"))
    started, timings, peaks = time.time(), {}, {}
    k = clusters or default_clusters(source.n)
    sample = kmeans_sample or default_sample(k)
    batches = max(1, min(k, math.ceil(source.n / batch_rows())))
    fingerprint = {"source": source.identity, "rows": [source.n, source.dim], "row_sample": _row_sample(source),
                   "mode": mode, "clusters": k, "max_cluster_size": max_cluster_size, "iterations": iterations,
                   "seed": seed, "probe_margin": probe_margin, "kmeans_sample": sample, "batches": batches}
    if rank == 0:
        work.start(fingerprint)
        centroids = _centroids(source, work, k, sample, iterations, seed, progress)
        timings["kmeans"], peaks["kmeans"] = time.time() - started, _peak_mb()
        mark = time.time()
        _assign(source, work, centroids, batches, probe_margin, seed, progress)
        timings["assign"], peaks["assign"] = time.time() - mark, _peak_mb()
    if barrier is not None:
        barrier()  # rank 0 has spilled every member list
    if rank != 0 and not work.wait_started(fingerprint):
        raise UserError(f"rank {rank}: {work.path} holds another run's work; give every rank the same arguments "
                        "and an --out on a file system they share")
    mark = time.time()
    mine = [b for b in range(batches) if b % world == rank]
    run_batches(source, work, mine, mode=mode, max_cluster_size=max_cluster_size, seed=seed, workers=workers,
                progress=progress)
    timings["pairwise"], peaks["pairwise"] = time.time() - mark, _peak_mb()
    if barrier is not None:
        barrier()  # every rank's batches are stored
    if rank != 0:
        return None
    mark = time.time()
    # A batch another rank stored but that is now missing or unreadable is computed here.
    run_batches(source, work, list(range(batches)), mode=mode, max_cluster_size=max_cluster_size, seed=seed,
                workers=workers, progress=False)
    result = _merge(source, work, batches, mode, survivor, target_removal, threshold)
    timings["merge"], peaks["merge"] = time.time() - mark, _peak_mb()
    result.seconds, result.timings, result.peak_mb = time.time() - started, timings, peaks
    return result


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # kB on Linux


def _check_arguments(mode, target_removal, threshold, survivor, world) -> None:
    if mode not in MODES:
        raise UserError(f"unknown curate mode '{mode}' (available: {', '.join(MODES)})")
    if survivor not in SURVIVORS:
        raise UserError(f"unknown survivor rule '{survivor}' (available: {', '.join(SURVIVORS)})")
    if (target_removal is None) == (threshold is None):
        raise UserError("give exactly one of --target-removal and --threshold")
    if target_removal is not None and not 0.0 <= target_removal < 1.0:
        raise UserError(f"--target-removal must be in [0, 1), got {target_removal}")
    if threshold is not None and not 0.0 <= threshold <= 2.0:
        raise UserError(f"--threshold ε must be in [0, 2] (cosine > 1 − ε), got {threshold}")
    if world < 1:
        raise UserError(f"world size must be at least 1, got {world}")


def _row_sample(source: RowSource) -> str:
    """A hash of ~1 000 rows spread over the input: notices a regenerated file that kept size and mtime."""
    import hashlib

    rows = np.unique(np.linspace(0, source.n - 1, min(source.n, 1024)).astype(np.int64))
    return hashlib.sha256(np.ascontiguousarray(source.gather(rows)).tobytes()).hexdigest()


def _centroids(source, work, k, sample, iterations, seed, progress) -> np.ndarray:
    centroids = work.load_centroids()
    if centroids is None:
        centroids = train_cells(source.sample(min(sample, source.n), seed), min(k, source.n),
                                iterations=iterations, seed=seed, progress=progress)
        work.save_centroids(centroids)
    return centroids


def _assign(source, work, centroids, batches, probe_margin, seed, progress) -> None:
    """Stream the rows past the centroids and spill each cell's member records (resumes per chunk)."""
    nearest = NearestCells(centroids, seed=seed)
    done = work.assigned_rows(batches)  # a multiple of BLOCK, or N
    starts = range(done, source.n, BLOCK)
    for start in tqdm(starts, desc="assign cells", unit="chunk", disable=not progress):
        stop = min(start + BLOCK, source.n)
        cells, sims = nearest.search(source.read(start, stop))
        rows = np.arange(start, stop, dtype=np.int64)
        guest = np.flatnonzero((cells[:, 1] >= 0) & (sims[:, 0] - sims[:, 1] <= probe_margin))
        records = np.zeros(len(rows) + len(guest), dtype=RECORD)
        records["cell"] = np.r_[cells[:, 0], cells[guest, 1]]
        records["row"] = np.r_[rows, rows[guest]]
        records["sim"] = np.r_[sims[:, 0], sims[guest, 1]]
        records["guest"][len(rows):] = 1
        home = np.zeros(len(rows), dtype=HOME)
        home["cell"], home["sim"] = cells[:, 0], sims[:, 0]
        work.append_chunk(home, records, batches, stop)


def _merge(source, work, batches, mode, survivor, target_removal, threshold) -> CurateResult:
    n = source.n
    columns = _stored_columns(work, batches)
    if mode == "cid":
        u, v, scores = global_forest(*columns, n)
    else:
        scores = np.full(n, -np.inf, dtype=np.float32)
        scores[columns[0]] = columns[1]
    # Chosen from every score at once: the same whether the batches were computed now or stored.
    t = np.float64(1.0 - threshold) if threshold is not None else pick_threshold(scores, target_removal, n)
    if mode == "cid":
        component = groups_above(u, v, scores, t, n)
        keep = survivors(component, survivor, source, lambda rows: _home(work, n)["sim"][rows])
    else:
        keep = np.flatnonzero(~(scores > t))
    centroids = work.load_centroids()
    sizes, kept, probed = _per_cluster(work, n, len(centroids), keep)
    return CurateResult(keep=keep.astype(np.int64), threshold=float(1.0 - t), centroids=centroids,
                        cluster_sizes=sizes, cluster_kept=kept, scores=scores, n_total=n, seconds=0.0,
                        probed=probed)


def _stored_columns(work, batches) -> list[np.ndarray]:
    """Every batch's stored columns, concatenated in batch order."""
    parts = [work.load_cells(b, len(work.records(b))) for b in range(batches)]
    return [np.concatenate(column) for column in zip(*parts)]


def _home(work, n) -> np.ndarray:
    return np.concatenate([work.home(a, min(a + BLOCK, n)) for a in range(0, n, BLOCK)])


def _per_cluster(work, n, k, keep) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows and kept rows per cell (read in chunks), and the fraction of rows that were also guests."""
    kept_mask = np.zeros(n, dtype=bool)
    kept_mask[keep] = True
    sizes, kept = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    for a in range(0, n, BLOCK):
        cells = work.home(a, min(a + BLOCK, n))["cell"]
        sizes += np.bincount(cells, minlength=k)
        kept += np.bincount(cells[kept_mask[a:a + len(cells)]], minlength=k)
    records = sum(file.stat().st_size for file in work.path.glob("members/batch_*.bin")) // RECORD.itemsize
    return sizes, kept, (records - n) / n


def pick_threshold(scores: np.ndarray, fraction: float, n_total: int) -> np.float64:
    """The similarity t for which ``count(scores > t)`` is the closest to ``fraction · n_total``."""
    finite = np.sort(scores[np.isfinite(scores)])[::-1]
    n_remove = int(round(fraction * n_total))
    if n_remove == 0:
        return np.float64(finite[0]) if len(finite) else np.float64(1.0)  # nothing above the largest
    if n_remove > len(finite):
        raise UserError(f"target removal {fraction:.3f} is unreachable: at most {len(finite) / n_total:.3f} of the "
                        "rows have a within-cluster neighbour; use fewer --clusters")
    # Thresholds are float64 scalars, so comparing them with float32 scores is exact.
    upper = np.float64(finite[n_remove - 1])
    lower = np.float64(finite[n_remove]) if n_remove < len(finite) else np.float64(-2.0)
    if lower < upper:
        return (upper + lower) / 2
    # Tied scores at the cut: remove all of the tied rows or none of them, whichever lands closer.
    below = np.nextafter(upper, -np.inf)
    too_many, too_few = int((finite > below).sum()) - n_remove, n_remove - int((finite > upper).sum())
    return below if too_many <= too_few else upper


