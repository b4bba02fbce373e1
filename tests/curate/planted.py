"""Planted near-duplicate groups among random vectors, and how well a keep list removes them."""
import numpy as np


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n_base=3000, dim=64, n_groups=300, seed=0):
    """Random unit vectors (pairwise cosine ~ N(0, 1/64)), plus 1–4 noisy copies of some of them.

    Returns the embeddings and a group id per row (-1: not part of a planted group).
    """
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n_base, dim)))
    sources = rng.choice(n_base, n_groups, replace=False)
    rows, group = [base], np.full(n_base, -1)
    group[sources] = np.arange(n_groups)
    for g, source in enumerate(sources):
        copies = unit(base[source] + 0.05 * rng.standard_normal((rng.integers(1, 5), dim)) / np.sqrt(dim))
        rows.append(copies)
        group = np.r_[group, np.full(len(copies), g)]
    x = np.concatenate(rows)
    order = rng.permutation(len(x))  # copies must not be recognizable by position
    return x[order], group[order]


def precision_recall(keep, group):
    removed = np.setdiff1d(np.arange(len(group)), keep)
    in_group = group[removed] >= 0
    n_copies = int((group >= 0).sum() - len(np.unique(group[group >= 0])))
    kept_per_group = np.bincount(group[keep][group[keep] >= 0], minlength=group.max() + 1)
    return in_group.mean(), in_group.sum() / n_copies, kept_per_group
