"""The duplicate pass, one batch of cells at a time, in worker processes and across ranks.

A batch's result depends only on its member list and the rows it names: one BLAS / OpenMP thread
per process (also faster for these small products: 7x on 2 cores, measured), the same order of
members, so a batch computed by any worker on any rank is the same bytes, and the merge reads the
batches in batch order. Ranks take the batches ``b % world == rank``; workers share a rank's batches.

Per cell: its own rows plus its *guests* (rows whose second-nearest centroid it is, within the probe
margin: near-duplicates across a cell boundary meet there); oversized cells are split (``partition``).
``cid``: the maximum spanning forest of each part (``duplicates``), as (row u, row v, cosine).
``semdedup``: own rows only, farthest from the centroid first, each row's maximum similarity to an
earlier one (SemDeDup's rule is defined per cluster).
"""
from __future__ import annotations

import logging
import multiprocessing

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from clipdistill.curate.duplicates import max_similarity_to_earlier, maximum_spanning_forests
from clipdistill.curate.partition import split_points
from clipdistill.curate.resume import WorkDir
from clipdistill.curate.sources import RowSource

log = logging.getLogger("clipdistill.curate")

# Similarity entries of the parts whose forests run in lock step (C · n_max²): 32 MB of float32.
LOCKSTEP_ENTRIES = 8_000_000


def batch_scores(source: RowSource, records: np.ndarray, *, mode: str, max_cluster_size: int,
                 seed: int) -> tuple[np.ndarray, ...]:
    """cid: ``(u, v, weight)`` forest edges of every cell of the batch; semdedup: ``(rows, score)``."""
    records = records[np.lexsort((records["row"], records["cell"]))]
    if mode == "semdedup":
        records = records[records["guest"] == 0]
    bounds = np.flatnonzero(np.diff(records["cell"])) + 1
    parts, pending = [], []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            for cell in np.split(records, bounds) if len(records) else []:
                points = source.gather(cell["row"])
                for local in split_points(points, max_cluster_size, seed=seed):
                    if mode == "semdedup":
                        parts.append(_semdedup_scores(points[local], cell[local]))
                        continue
                    pending.append((points[local], cell["row"][local]))
                    if len(pending) * max(len(p) for p, _ in pending) ** 2 >= LOCKSTEP_ENTRIES:
                        parts.extend(_forests(pending))
                        pending = []
            parts.extend(_forests(pending))
    finally:
        faiss.omp_set_num_threads(threads)
    if not parts:
        empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
        return empty if mode == "cid" else empty[1:]
    return tuple(np.concatenate(column) for column in zip(*parts))


def _semdedup_scores(points: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(members["sim"], kind="stable")  # farthest from the centroid first
    points = points[order]
    return members["row"][order], max_similarity_to_earlier(points @ points.T)


def _forests(pending: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    """The maximum spanning forest of each part (points, row ids), computed in lock step."""
    if not pending:
        return []
    sizes = np.array([len(rows) for _, rows in pending])
    sims = np.zeros((len(pending), sizes.max(), sizes.max()), dtype=np.float32)
    for g, (points, _) in enumerate(pending):
        sims[g, :len(points), :len(points)] = points @ points.T
    out = []
    for (_, rows), (u, v, w) in zip(pending, maximum_spanning_forests(sims, sizes)):
        rows = rows.astype(np.int32) if len(rows) and rows.max() < 2**31 else rows  # the merge holds every edge
        out.append((rows[u], rows[v], w))
    return out


def _compute(task) -> int:
    source, work_path, batch, mode, max_cluster_size, seed = task
    work = WorkDir(work_path)
    records = work.records(batch)
    work.save_cells(batch, len(records), batch_scores(source, records, mode=mode,
                                                      max_cluster_size=max_cluster_size, seed=seed))
    return batch


def run_batches(source: RowSource, work: WorkDir, batches: list[int], *, mode: str, max_cluster_size: int,
                seed: int, workers: int = 1, progress: bool = False) -> int:
    """Compute (and store) every batch of ``batches`` that is not stored yet; returns how many were."""
    todo = [b for b in batches if work.load_cells(b, len(work.records(b))) is None]
    if len(todo) < len(batches):
        log.info("duplicate pass: %d of %d batches reused from %s", len(batches) - len(todo), len(batches), work.path)
    tasks = [(source, str(work.path), b, mode, max_cluster_size, seed) for b in todo]
    with tqdm(total=len(tasks), desc=f"{mode} pairwise", unit="batch", disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _compute(task)
                bar.update(1)
        else:
            # Spawned: a fork of a process whose OpenMP threads have run can hang in the child.
            with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                for _ in pool.imap_unordered(_compute, tasks):
                    bar.update(1)
    return len(todo)
