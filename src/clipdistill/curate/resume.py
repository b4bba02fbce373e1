"""Resumable curation: the finished parts of a ``clipdistill curate`` run, kept in ``OUT/.work/``.

Killed at any point, the same command continues from the last finished part and writes the same keep
list as an uninterrupted run. The parts:

- ``clustering.npz``: k-means labels, each row's similarity to its centroid, the centroids, and the
  groups left after oversized clusters were split. Stored, not recomputed: the stored scores were
  computed on exactly these groups, and nothing guarantees FAISS redraws them bit for bit.
- ``scores_GGGGGGGG.npz``: the duplicate scores of the groups G .. G + chunk − 1 (see ``duplicates``).
- ``fingerprint.json``: what the parts were computed from — the embeddings' path, size and
  modification time, a sample of the rows, and the arguments that shape clusters and scores. Any
  difference starts over, with a log line.

``--target-removal`` / ``--threshold`` are not in the fingerprint: the threshold is chosen after every
chunk's scores are in, from all of them, exactly as in an uninterrupted run.

Each file is written under a temporary name, fsync'ed and renamed (``clipdistill.atomic``): a kill
leaves a part whole or absent, never half-written. The command removes the directory once its
outputs are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_atomic, write_text_atomic

log = logging.getLogger("clipdistill.curate")

# Groups per scores file. At ~500 rows a group, about 20 s of pairwise work on one core: a kill loses
# at most that, and 400 M rows make ~1 000 files.
CHUNK_GROUPS = 1000
# Tests make chunks tiny to have several of them on a small dataset.
CHUNK_ENV = "CLIPDISTILL_CURATE_CHUNK"
_FINGERPRINT = "fingerprint.json"
_CLUSTERING = "clustering.npz"
# Rows hashed into the fingerprint: enough to notice a regenerated file that kept its size and mtime.
_SAMPLE_ROWS = 1024


@dataclass
class Clustering:
    labels: np.ndarray  # (N,) k-means cluster of every row
    centrality: np.ndarray  # (N,) cosine similarity of every row to its centroid
    centroids: np.ndarray  # (K, D)
    groups: list[np.ndarray]  # row indices of each group that pairwise work runs on


class WorkDir:
    """The finished parts of one curation, on disk; ``start`` first, then load or save parts."""

    def __init__(self, path: str | Path, source: str | Path, chunk_groups: int | None = None):
        self.path = Path(path)
        self.source = Path(source)
        self.chunk_groups = max(1, chunk_groups or int(os.environ.get(CHUNK_ENV, CHUNK_GROUPS)))

    def start(self, x: np.ndarray, arguments: dict) -> None:
        """Keep what a run with the same inputs and arguments left here; otherwise start over."""
        fingerprint = self._fingerprint(x, arguments)
        if self._stored_fingerprint() == fingerprint:
            log.info("resuming the curation left in %s", self.path)
            return
        if self.path.exists():
            log.info("%s holds work on other inputs or arguments (or is incomplete); starting over", self.path)
            self.remove()
        self.path.mkdir(parents=True)
        write_text_atomic(self.path / _FINGERPRINT, json.dumps(fingerprint, indent=2))

    def load_clustering(self) -> Clustering | None:
        stored = self._load(_CLUSTERING)
        if stored is None:
            return None
        labels, centrality, centroids, members, bounds = stored
        return Clustering(labels, centrality, centroids, np.split(members, bounds[:-1]))

    def save_clustering(self, clustering: Clustering) -> None:
        # Scores belong to the groups they were computed on: none may outlive a new clustering.
        for old in self.path.glob("scores_*.npz"):
            old.unlink()
        sizes = np.array([len(g) for g in clustering.groups], dtype=np.int64)
        self._save(_CLUSTERING, clustering.labels, clustering.centrality, clustering.centroids,
                   np.concatenate(clustering.groups), np.cumsum(sizes))

    def load_scores(self, first_group: int) -> tuple[np.ndarray, ...] | None:
        return self._load(_scores_name(first_group))

    def save_scores(self, first_group: int, columns: tuple[np.ndarray, ...]) -> None:
        self._save(_scores_name(first_group), *columns)

    def remove(self) -> None:
        # The fingerprint goes first: a kill during the removal leaves a directory nothing trusts.
        (self.path / _FINGERPRINT).unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)

    def _fingerprint(self, x: np.ndarray, arguments: dict) -> dict:
        stride = max(1, len(x) // _SAMPLE_ROWS)
        sample = hashlib.sha256(np.ascontiguousarray(x[::stride]).tobytes()).hexdigest()
        fingerprint = {"source": _source_identity(self.source), "rows": list(x.shape), "row_sample": sample,
                       "chunk_groups": self.chunk_groups, **arguments}
        return json.loads(json.dumps(fingerprint))  # as read back from disk: lists, not tuples

    def _stored_fingerprint(self) -> dict | None:
        try:
            return json.loads((self.path / _FINGERPRINT).read_text())
        except (OSError, ValueError):
            return None

    def _save(self, name: str, *arrays: np.ndarray) -> None:
        write_atomic(self.path / name, lambda file: np.savez(file, *arrays))

    def _load(self, name: str) -> tuple[np.ndarray, ...] | None:
        """The arrays of a part, in the order they were saved; None if the part is not there (or unreadable)."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return tuple(stored[f"arr_{i}"] for i in range(len(stored.files)))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            # Renamed only when complete, so this takes a crash of the machine or a hand: redo the part.
            log.warning("%s is unreadable (%s); computing it again", path, err)
            return None


def _scores_name(first_group: int) -> str:
    return f"scores_{first_group:08d}.npz"


def _source_identity(source: Path) -> dict:
    """The embeddings' path, size and modification time; for a directory (a teacher cache), every file's."""
    source = source.resolve()
    if not source.is_dir():
        stat = source.stat()
        return {"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    files = sorted(p for p in source.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"path": str(source), "files": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
