"""The work directory of one curation (``OUT/.work/``): what is spilled to disk and what a rerun reuses.

Killed at any point, the same command continues from what is stored and writes the same keep list as
an uninterrupted run. The parts, in the order they are made:

- ``fingerprint.json``: what the parts were computed from (the input's identity, size and a sample of
  its rows; the arguments that shape cells and scores). Any difference starts over, with a log line.
  ``--threshold``/``--target-removal``/``--survivor``/``--workers`` are not in it: they act after the
  stored parts (or do not change them).
- ``centroids.npy``: the k-means centroids (trained on a sample). Stored, not recomputed: FAISS is
  not guaranteed to redraw them bit for bit.
- ``members/``: per-cell member lists, spilled while the rows stream past: ``batch_BBBBBB.bin`` holds
  the records (cell, row, similarity, guest) of every cell ``c`` with ``c % batches == B``, appended
  chunk by chunk, and ``home.bin`` each row's own cell and similarity, in row order. After each chunk
  ``members/progress.json`` (written atomically) records the rows done and every file's length; a
  rerun cuts the files back to those lengths, so a chunk half-appended by a kill is appended again,
  never twice.
- ``cells/batch_BBBBBB.npz``: the duplicate edges (or scores) of batch B's cells, with the number of
  records they were computed from. Written under a temporary name and renamed; one that cannot be read
  or does not match its member list (truncated, a crash, a hand) is computed again.

The command removes the directory once its outputs are written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_atomic, write_text_atomic

log = logging.getLogger("clipdistill.curate")

# Member rows per batch of cells (the unit of parallel work and of resume): ~1-3 s of pairwise work.
BATCH_ROWS = 65536
# Tests make batches tiny to have several of them on a small dataset.
CHUNK_ENV = "CLIPDISTILL_CURATE_CHUNK"
RECORD = np.dtype([("cell", "<i4"), ("row", "<i8"), ("sim", "<f4"), ("guest", "i1")])
HOME = np.dtype([("cell", "<i4"), ("sim", "<f4")])
_FINGERPRINT = "fingerprint.json"


def batch_rows() -> int:
    return max(1, int(os.environ.get(CHUNK_ENV, BATCH_ROWS)))


class WorkDir:
    """The stored parts of one curation; ``start`` first, then load or save parts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- fingerprint
    def start(self, fingerprint: dict) -> None:
        """Keep what a run with the same inputs and arguments left here; otherwise start over."""
        fingerprint = json.loads(json.dumps(fingerprint))  # as read back from disk: lists, not tuples
        if self._stored_fingerprint() == fingerprint:
            log.info("resuming the curation left in %s", self.path)
            return
        if self.path.exists():
            log.info("%s holds work on other inputs or arguments (or is incomplete); starting over", self.path)
            self.remove()
        (self.path / "members").mkdir(parents=True)
        (self.path / "cells").mkdir()
        write_text_atomic(self.path / _FINGERPRINT, json.dumps(fingerprint, indent=2))

    def wait_started(self, fingerprint: dict) -> bool:
        """For a rank other than 0, after rank 0 started: is this directory the same run's?"""
        return self._stored_fingerprint() == json.loads(json.dumps(fingerprint))

    def remove(self) -> None:
        # The fingerprint goes first: a kill during the removal leaves a directory nothing trusts.
        (self.path / _FINGERPRINT).unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)

    # ---- centroids
    def load_centroids(self) -> np.ndarray | None:
        try:
            return np.load(self.path / "centroids.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None

    def save_centroids(self, centroids: np.ndarray) -> None:
        write_atomic(self.path / "centroids.npy", lambda file: np.save(file, centroids))

    # ---- member lists
    def batch_file(self, batch: int) -> Path:
        return self.path / "members" / f"batch_{batch:06d}.bin"

    @property
    def home_file(self) -> Path:
        return self.path / "members" / "home.bin"

    def assigned_rows(self, batches: int) -> int:
        """Rows whose records are stored; files are cut back to the last recorded chunk (see module doc)."""
        try:
            progress = json.loads((self.path / "members" / "progress.json").read_text())
        except (OSError, ValueError):
            progress = {"rows": 0, "bytes": {}}
        files = [self.home_file] + [self.batch_file(b) for b in range(batches)]
        for file in files:
            with open(file, "ab") as handle:
                handle.truncate(int(progress["bytes"].get(file.name, 0)))
        return int(progress["rows"])

    def append_chunk(self, home: np.ndarray, records: np.ndarray, batches: int, rows_done: int) -> None:
        """Append one chunk's records (sorted by batch), then record the new lengths."""
        with open(self.home_file, "ab") as handle:
            home.tofile(handle)
        batch_of = records["cell"] % batches
        order = np.argsort(batch_of, kind="stable")
        records, batch_of = records[order], batch_of[order]
        bounds = np.flatnonzero(np.diff(batch_of)) + 1
        for part in np.split(records, bounds) if len(records) else []:
            with open(self.batch_file(int(part["cell"][0]) % batches), "ab") as handle:
                part.tofile(handle)
        lengths = {f.name: f.stat().st_size for f in self.path.glob("members/*.bin")}
        write_text_atomic(self.path / "members" / "progress.json", json.dumps({"rows": rows_done, "bytes": lengths}))

    def records(self, batch: int) -> np.ndarray:
        file = self.batch_file(batch)
        return np.fromfile(file, dtype=RECORD) if file.is_file() else np.zeros(0, dtype=RECORD)

    def home(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop``'s own cell and similarity (plain reads: nothing stays mapped)."""
        with open(self.home_file, "rb") as handle:
            handle.seek(start * HOME.itemsize)
            return np.fromfile(handle, dtype=HOME, count=stop - start)

    # ---- per-batch results
    def cells_file(self, batch: int) -> Path:
        return self.path / "cells" / f"batch_{batch:06d}.npz"

    def save_cells(self, batch: int, n_records: int, columns: tuple[np.ndarray, ...]) -> None:
        write_atomic(self.cells_file(batch), lambda file: np.savez(file, np.int64(n_records), *columns))

    def load_cells(self, batch: int, n_records: int) -> tuple[np.ndarray, ...] | None:
        """A batch's stored columns; None if absent, unreadable, or computed from other member lists."""
        path = self.cells_file(batch)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("%s is unreadable (%s); computing it again", path, err)
            return None
        if int(arrays[0]) != n_records:
            log.warning("%s was computed from other member lists; computing it again", path)
            return None
        return tuple(arrays[1:])

    def _stored_fingerprint(self) -> dict | None:
        try:
            return json.loads((self.path / _FINGERPRINT).read_text())
        except (OSError, ValueError):
            return None
