"""Semantic balance / SemDeDup against planted duplicates and a brute-force all-pairs oracle."""
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from clipdistill.curate import curate, pick_threshold
from clipdistill.curate.duplicates import max_similarity_to_earlier, maximum_spanning_forest
from clipdistill.errors import UserError
from curate.planted import planted, precision_recall, unit


@pytest.mark.parametrize("mode", ["cid", "semdedup"])
def test_planted_copies_removed_with_precision_and_recall(mode):
    x, group = planted()
    result = curate(x, mode=mode, clusters=8, threshold=0.02)
    precision, recall, kept_per_group = precision_recall(result.keep, group)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert (kept_per_group == 1).mean() >= 0.95  # one survivor per planted group


def test_target_removal_matching_planted_fraction_finds_them():
    x, group = planted(seed=1)
    fraction = ((group >= 0).sum() - len(np.unique(group[group >= 0]))) / len(x)
    result = curate(x, mode="cid", clusters=8, target_removal=fraction)
    assert abs(result.removal - fraction) <= 0.005
    precision, recall, _ = precision_recall(result.keep, group)
    assert precision >= 0.95 and recall >= 0.95


def naive_cid(x, t, centroid):
    """All pairs of one cluster, union-find, most central member of each component."""
    sim = x @ x.T
    _, comp = connected_components(sim > t, directed=False)
    centrality = x @ centroid
    return sorted(int(np.flatnonzero(comp == c)[np.argmax(centrality[comp == c])]) for c in np.unique(comp))


def naive_cid_group_mean(x, t, centroid):
    """All pairs, union-find, and each component keeps the member nearest (Euclidean) its own mean."""
    _, comp = connected_components(x @ x.T > t, directed=False)
    keep = []
    for c in np.unique(comp):
        members = np.flatnonzero(comp == c)
        mean = x[members].astype(np.float64).mean(axis=0)
        distance = np.linalg.norm(x[members] - mean, axis=1)
        # ‖p − m‖² = 1 − 2 p·m + ‖m‖²: the 1e-6 cosine tie of the implementation is 2e-6 here
        squared = distance ** 2
        keep.append(int(members[np.flatnonzero(squared <= squared.min() + 2e-6)[0]]))
    return sorted(keep)


def naive_semdedup(x, t, centroid):
    order = np.argsort(x @ centroid, kind="stable")  # farthest first
    keep = [j for pos, j in enumerate(order) if all(x[i] @ x[j] <= t for i in order[:pos])]
    return sorted(int(j) for j in keep)


@pytest.mark.parametrize("mode,survivor,naive", [("cid", "centroid", naive_cid),
                                                ("cid", "group_mean", naive_cid_group_mean),
                                                ("semdedup", "group_mean", naive_semdedup)])
def test_one_cluster_equals_all_pairs_oracle(mode, survivor, naive):
    rng = np.random.default_rng(3)
    centers = unit(rng.standard_normal((5, 8)))
    x = unit(centers[rng.integers(0, 5, 120)] + 0.3 * rng.standard_normal((120, 8)))
    result = curate(x, mode=mode, clusters=1, threshold=0.1, survivor=survivor)
    centroid = result.centroids[0]
    assert result.keep.tolist() == naive(x, 0.9, centroid)
    assert 0 < len(result.keep) < len(x)


def test_spanning_forest_weight_equals_brute_force_maximum():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((7, 3)))
    sim = x @ x.T
    u, v, w = maximum_spanning_forest(sim)
    assert np.allclose(sim[u, v], w)
    _, comp = connected_components(np.ones((7, 7)) * 0 + (np.eye(7)[u].T @ np.eye(7)[v] > 0), directed=False)
    assert comp.max() == 0  # a spanning tree
    # Kruskal by brute force for the optimum
    edges = sorted(((sim[i, j], i, j) for i in range(7) for j in range(i + 1, 7)), reverse=True)
    parent = list(range(7))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a
    best = 0.0
    for s, i, j in edges:
        if find(i) != find(j):
            parent[find(i)] = find(j)
            best += s
    assert w.sum() == pytest.approx(best, rel=1e-5)


def test_max_similarity_to_earlier():
    sim = np.array([[1, .2, .9], [.2, 1, .5], [.9, .5, 1]], dtype=np.float32)
    assert max_similarity_to_earlier(sim).tolist() == [-np.inf, pytest.approx(.2), pytest.approx(.9)]


def test_pick_threshold_counts_and_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.5, -np.inf], dtype=np.float32)
    assert ((scores > pick_threshold(scores, 0.2, 5)).sum()) == 1
    assert ((scores > pick_threshold(scores, 0.6, 5)).sum()) == 3
    assert ((scores > pick_threshold(scores, 0.0, 5)).sum()) == 0
    with pytest.raises(UserError, match="unreachable"):
        pick_threshold(scores, 0.99, 5)


def test_oversized_clusters_are_split_and_still_find_duplicates():
    x, group = planted(n_base=1500, n_groups=100, seed=2)
    result = curate(x, mode="cid", clusters=1, max_cluster_size=300, threshold=0.02)
    precision, recall, _ = precision_recall(result.keep, group)
    assert precision >= 0.95 and recall >= 0.8  # copies split away from their source are missed


def test_bad_arguments_are_user_errors():
    x = unit(np.random.default_rng(0).standard_normal((50, 4)))
    with pytest.raises(UserError, match="exactly one"):
        curate(x, threshold=0.1, target_removal=0.2)
    with pytest.raises(UserError, match="unknown curate mode"):
        curate(x, mode="fast", threshold=0.1)


def test_lock_step_forests_equal_one_group_at_a_time():
    from clipdistill.curate.duplicates import maximum_spanning_forests

    rng = np.random.default_rng(5)
    sizes = np.array([1, 2, 37, 60, 59])
    sims = np.full((5, 60, 60), 7.0, dtype=np.float32)  # padding that would win if it were read
    for g, s in enumerate(sizes):
        x = unit(rng.standard_normal((s, 6)))
        sims[g, :s, :s] = x @ x.T
    for g, (u, v, w) in enumerate(maximum_spanning_forests(sims, sizes)):
        s = sizes[g]
        expected = maximum_spanning_forest(sims[g, :s, :s])
        for got, want in zip((u, v, w), expected):
            np.testing.assert_array_equal(got, want)
