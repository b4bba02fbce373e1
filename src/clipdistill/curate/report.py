"""What a curation writes: ``keep.npy``, ``report.json`` and ``report.png``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_atomic, write_text_atomic
from clipdistill.curate.balance import CurateResult


def per_cluster_removal(result: CurateResult) -> np.ndarray:
    """Fraction of each k-means cluster's rows that was removed, ``(K,)`` (0 for empty clusters)."""
    sizes, kept = result.cluster_sizes, result.cluster_kept
    return np.where(sizes > 0, 1.0 - kept / np.maximum(sizes, 1), 0.0)


def write_report(result: CurateResult, out_dir: str | Path, *, mode: str, extra: dict | None = None,
                 keep: np.ndarray | None = None) -> dict:
    """Write the outputs; ``keep.npy`` holds ``keep`` if given (the kept rows renamed, e.g. a teacher cache's
    rows as dataset rows), else ``result.keep``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Each output is written whole or not at all: a kill or a full disk never leaves a truncated keep list.
    write_atomic(out / "keep.npy", lambda file: np.save(file, result.keep if keep is None else keep))
    report = {"n_total": result.n_total, "n_kept": int(len(result.keep)), "removal": result.removal,
              "threshold": result.threshold, "min_duplicate_cosine": 1.0 - result.threshold,
              "clusters": int(len(result.centroids)), "mode": mode,
              "probed": round(result.probed, 4), "seconds": round(result.seconds, 2),
              "timings": {k: round(v, 2) for k, v in result.timings.items()},
              "peak_mb_after": result.peak_mb, **(extra or {})}
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    _plot(result, out / "report.png")
    return report


def _plot(result: CurateResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removal = np.sort(per_cluster_removal(result))[::-1]
    scores = result.scores[np.isfinite(result.scores)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3))
    left.plot(np.arange(len(removal)), 100 * removal, color="#2a7ab9")
    left.set(title="removal per cluster (sorted)", xlabel="cluster rank", ylabel="removed (%)")
    right.hist(scores, bins=100, color="#888888")
    right.axvline(1.0 - result.threshold, color="#c0392b", label=f"1 − ε = {1.0 - result.threshold:.3f}")
    right.set(title="duplicate-score similarity", xlabel="cosine", ylabel="count")
    right.legend(loc="upper left")
    fig.tight_layout()
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=110))
    plt.close(fig)
