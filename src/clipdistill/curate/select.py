"""From every batch's duplicate edges to the keep list: threshold, groups, one survivor per group.

``cid``: the batches' forests overlap where a guest row met a cell twice, so they are merged into one
maximum spanning forest of their union (SciPy's spanning tree on weights 2 − cosine, after keeping
each pair once). Its edge weights are the scores: at threshold t exactly ``count(score > t)`` rows go,
whatever the order the batches came in. Groups are the connected components of the forest edges
above t (union-find over every pair above t, transitively); each keeps its survivor:

- ``group_mean`` (CLIP-CID as described): the member nearest the group's own mean (largest cosine to
  the mean; within 1e-6 of the best is a tie, which goes to the lowest row);
- ``centroid``: the member most similar to its k-means centroid (our first reading, kept as an option).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from clipdistill.curate.sources import RowSource

SURVIVORS = ("group_mean", "centroid")
# Rows per pass of the group-mean survivor rule (float64 copies of them: ~8 · D bytes each).
GROUP_ROWS = 16384
# Cosines to the group mean this close count as a tie, which goes to the lowest row.
TIE = 1e-6


def global_forest(u: np.ndarray, v: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """The maximum spanning forest of the union of the edges ``(u, v, w)`` over ``n`` rows.

    Memory matters here (the merge holds every batch's edges): pairs are keyed once, sorted once, and
    the sparse graph is built directly in CSR form from the sorted keys.
    """
    a, b = np.minimum(u, v), np.maximum(u, v)
    key = a.astype(np.int64) * n + b
    del a, b
    order = np.lexsort((-w, key))
    key, w = key[order], w[order]
    del order
    first = np.r_[True, key[1:] != key[:-1]]  # each pair once, at its largest cosine
    key, w = key[first], w[first]
    del first
    rows = key // n
    indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    del rows
    # 2 − w > 0 is exact in float64 for a float32 w, and a minimum tree on it is a maximum tree on w.
    graph = csr_matrix((2.0 - w.astype(np.float64), (key % n).astype(np.int32), indptr), shape=(n, n))
    del key, w, indptr
    forest = minimum_spanning_tree(graph).tocoo()
    del graph
    return forest.row.astype(np.int64), forest.col.astype(np.int64), (2.0 - forest.data).astype(np.float32)


def groups_above(u: np.ndarray, v: np.ndarray, w: np.ndarray, t: float, n: int) -> np.ndarray:
    """Connected component of every row over the edges with weight > t."""
    above = w > t
    graph = coo_matrix((np.ones(int(above.sum()), dtype=np.int8), (u[above], v[above])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def survivors(component: np.ndarray, rule: str, source: RowSource, centrality) -> np.ndarray:
    """The kept rows: every row alone in its group, plus one survivor of each larger group."""
    sizes = np.bincount(component)
    shared = np.flatnonzero(sizes[component] > 1)
    alone = np.flatnonzero(sizes[component] == 1)
    if not len(shared):
        return alone
    members = shared[np.argsort(component[shared], kind="stable")]  # by group, rows ascending
    group = component[members]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    if rule == "centroid":
        score, tolerance = centrality(members), 0.0
    else:
        # The two members of a pair are equally near their mean: rounding must not pick one.
        score, tolerance = _cosine_to_group_mean(members, group, source), TIE
    best = np.repeat(np.maximum.reduceat(score, starts), np.diff(np.r_[starts, len(members)]))
    tied = np.flatnonzero(score >= best - tolerance)  # in group order, rows ascending within a group
    first = tied[np.r_[True, group[tied][1:] != group[tied][:-1]]]
    return np.sort(np.r_[alone, members[first]])


def _cosine_to_group_mean(members: np.ndarray, group: np.ndarray, source: RowSource) -> np.ndarray:
    """Each member's cosine to its group's mean, whole groups at a time (memory: ~``GROUP_ROWS`` rows)."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    score = np.empty(len(members), dtype=np.float64)
    begin = 0
    while begin < len(starts):
        end = int(np.searchsorted(starts, starts[begin] + GROUP_ROWS, side="left"))
        end = max(end, begin + 1)
        lo, hi = starts[begin], (starts[end] if end < len(starts) else len(members))
        rows = members[lo:hi]
        order = np.argsort(rows, kind="stable")  # gathered in row order, put back in group order
        points = np.empty((len(rows), source.dim), dtype=np.float64)
        points[order] = source.gather(rows[order])
        local = starts[begin:end] - lo
        means = np.add.reduceat(points, local, axis=0)
        sizes = np.diff(np.r_[local, len(rows)])
        means /= sizes[:, None]
        score[lo:hi] = np.einsum("ij,ij->i", points, np.repeat(means, sizes, axis=0))
        begin = end
    return score
