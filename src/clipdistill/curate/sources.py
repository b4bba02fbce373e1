"""Read the embeddings to curate or cluster: a ``.npy`` file (N×D float) or a teacher-cache directory.

A cache (written by ``clipdistill cache``) holds rows in shard order, without the samples that were
skipped as bad, so its row numbers are not dataset rows: :class:`CacheEmbeddings` carries each row's
dataset position (the ``index`` tensor every shard stores) for whoever must name dataset rows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from clipdistill.errors import UserError

if TYPE_CHECKING:  # the cache package imports torch; this module is read without it
    from clipdistill.cache.index import KeyIndex

BLOCK = 65536


def is_cache(path: str | Path) -> bool:
    """A directory is taken for a teacher cache; :class:`~clipdistill.cache.TeacherCache` checks that it is one."""
    return Path(path).is_dir()


def _mapped_npy(path: Path) -> np.ndarray:
    """``path`` checked to be a non-empty (N, D) float ``.npy`` file, memory-mapped (nothing read yet)."""
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a .npy file (a teacher cache is read as a cache)")
    if not path.is_file():
        raise UserError(f"embeddings file not found: {path}")
    try:
        mapped = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err})") from None
    if mapped.ndim != 2 or not np.issubdtype(mapped.dtype, np.floating) or len(mapped) == 0:
        raise UserError(f"{path}: expected a non-empty (N, D) float array, got {mapped.dtype} {mapped.shape}")
    return mapped


def load_unit_embeddings(path: str | Path, *, progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 rows of a ``.npy`` file, scaled to unit length.

    float32 input is loaded once and normalized in place (peak memory: one copy of the data); other
    dtypes are memory-mapped and converted block by block into one float32 array.
    """
    path = Path(path)
    raw = _mapped_npy(path)
    if raw.dtype == np.float32:
        return _normalize_rows(np.load(path), path, progress)
    return _normalize_rows(np.empty(raw.shape, dtype=np.float32), path, progress, source=raw)


@dataclass
class CacheEmbeddings:
    """Unit-norm float32 embeddings of a teacher cache, rows in the cache's order (shard order)."""

    image: np.ndarray  # (N, D) the first stored view of each image (view 0)
    text: np.ndarray | None  # (N, D) when asked for
    dataset_rows: np.ndarray  # (N,) int64 dataset position of each row; -1 for WebDataset input
    index: KeyIndex  # the cache's sorted keys and their rows
    directory: Path

    def row_names(self) -> np.ndarray:
        """What a keep list calls each row: its dataset row, or its sample key for a cache of WebDataset
        shards (whose samples have no rows; training on shards filters by key)."""
        if not np.any(self.dataset_rows < 0):
            return self.dataset_rows
        keys = np.empty(len(self.index), dtype=self.index.sorted_keys.dtype)
        keys[self.index.sorted_rows] = self.index.sorted_keys
        return keys


def read_cache(directory: str | Path, *, text: bool = False, progress: bool = False) -> CacheEmbeddings:
    """Image (and, with ``text``, caption) embeddings of a complete teacher cache.

    The cache stores ``V`` augmented views per image, ``(N, V, D)``; the first one (view 0) stands for
    the image. Curation and k-means see one vector per sample, and view 0 exists whatever ``V`` is.
    """
    from clipdistill.cache.reader import TeacherCache  # torch and safetensors, only when a cache is read

    cache = TeacherCache(directory)  # one-line UserError if it is not a cache or is incomplete
    if len(cache) == 0:
        raise UserError(f"teacher cache {directory} holds no samples")
    image = _normalize_rows(cache.image_view(0).float().contiguous().numpy(), directory, progress)
    captions = _normalize_rows(cache.text.float().contiguous().numpy(), directory, progress) if text else None
    return CacheEmbeddings(image=image, text=captions, dataset_rows=cache.dataset_rows.numpy(), index=cache.index,
                           directory=Path(directory))


def _normalize_rows(x: np.ndarray, name, progress: bool, source: np.ndarray | None = None) -> np.ndarray:
    """Scale the rows of float32 ``x`` to unit length in place, block by block, first copying each block
    from ``source`` when given (so a memory-mapped non-float32 file is converted without a second copy)."""
    for start in tqdm(range(0, len(x), BLOCK), desc="normalize", unit="block", disable=not progress):
        block = x[start:start + BLOCK]
        if source is not None:
            block[:] = source[start:start + BLOCK]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise UserError(f"{name}: rows near {start} are zero or not finite")
        block /= norms
    return x


# ----------------------------------------------------------------------------------------------------
# Out-of-core row sources for ``curate``: rows are read a chunk or a cell at a time, never whole.


class RowSource:
    """Rows to curate, read in pieces: ``read(start, stop)`` (a contiguous chunk) and ``gather(rows)``
    (sorted row ids, e.g. one cell's members). Both return float32 rows scaled to unit length."""

    n: int
    dim: int
    identity: str  # what the rows are, for the resume fingerprint

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def gather(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, size: int, seed: int) -> np.ndarray:
        """``size`` distinct rows drawn uniformly (sorted ids, gathered in pieces)."""
        rows = np.arange(self.n) if size >= self.n else np.sort(np.random.default_rng(seed).choice(self.n, size,
                                                                                                  replace=False))
        out = np.empty((len(rows), self.dim), dtype=np.float32)  # filled in place: one copy of the sample
        for a in range(0, len(rows), BLOCK):
            part = rows[a:a + BLOCK]
            out[a:a + len(part)] = self.read(int(part[0]), int(part[-1]) + 1) if size >= self.n else self.gather(part)
        return out


def unit_rows(block: np.ndarray, name, where: int) -> np.ndarray:
    """float32 copy of ``block`` with unit-length rows; zero or non-finite rows stop with one line."""
    out = np.array(block, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise UserError(f"{name}: rows near {where} are zero or not finite")
    out /= norms
    return out


class ArrayRows(RowSource):
    """An in-memory ``(N, D)`` float array (the Python API's input)."""

    def __init__(self, x: np.ndarray, name: str = "embeddings"):
        if x.ndim != 2 or len(x) == 0:
            raise UserError(f"{name}: expected a non-empty (N, D) array, got shape {x.shape}")
        self.x, self.name = x, name
        self.n, self.dim = x.shape
        self.identity = f"array {x.dtype} {x.shape}"

    def read(self, start: int, stop: int) -> np.ndarray:
        return unit_rows(self.x[start:stop], self.name, start)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return unit_rows(self.x[rows], self.name, int(rows[0]) if len(rows) else 0)


class NpyRows(RowSource):
    """A ``.npy`` file of any float dtype (fp16 included), never loaded whole and never mapped.

    Chunks and single rows are read with plain reads (``pread``; runs of consecutive rows in one
    call), so the process's resident set holds only what it asked for. A memory map would do too but
    for the accounting: each row read through one maps the page-cache folio around it (up to MBs on
    current kernels; 1 024 rows spread over a 600 MB file left 560 MB resident, measured).
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        mapped = _mapped_npy(path)
        if not mapped.flags.c_contiguous:
            raise UserError(f"{path}: a Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
        self.path, self.dtype, self.offset = path, mapped.dtype, mapped.offset
        self.n, self.dim = mapped.shape
        self.row_bytes = self.dim * self.dtype.itemsize
        del mapped
        stat = path.stat()
        self.identity = f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.gather(np.arange(start, stop))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        raw = np.empty((len(rows), self.dim), dtype=self.dtype)
        view = memoryview(raw.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
        starts, stops = np.r_[0, breaks], np.r_[breaks, len(rows)]
        with open(self.path, "rb", buffering=0) as file:
            for a, b in zip(starts.tolist(), stops.tolist()):
                want = (b - a) * self.row_bytes
                got = os.preadv(file.fileno(), [view[a * self.row_bytes:b * self.row_bytes]],
                                self.offset + int(rows[a]) * self.row_bytes)
                if got != want:
                    raise UserError(f"{self.path}: rows {rows[a]}..{rows[b - 1]} cannot be read (file truncated?)")
        return unit_rows(raw, self.path, int(rows[0]) if len(rows) else 0)


class CacheImages(RowSource):
    """A teacher cache at the image level: one row per stored image (view 0), not per caption.

    Format 2 caches store an image once for all its captions (``image_row``); curating caption rows
    would compare an image's captions with each other. ``names_of_images(kept)`` expands kept images
    to what a keep list names: every cache row (dataset row or sample key) that shows a kept image.
    """

    def __init__(self, directory: str | Path):
        from clipdistill.cache.reader import TeacherCache
        from clipdistill.cache.storage import read_shard, shard_path

        cache = TeacherCache(directory)  # one-line UserError if it is not a complete cache
        if len(cache) == 0:
            raise UserError(f"teacher cache {directory} holds no samples")
        parts = [read_shard(shard_path(cache.directory, s, cache.manifest["storage"]))[0]
                 for s in range(cache.manifest["num_shards"])]
        self._images = [p["image"] for p in parts]
        sizes = np.array([len(p) for p in self._images], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        # Global image id of every cache row, in cache row order (format 1: one image per row).
        self.image_of_row = np.concatenate([
            (p["image_row"].numpy() if "image_row" in p else np.arange(len(p["text"]))) + self._starts[s]
            for s, p in enumerate(parts)])
        self.cache = CacheEmbeddings(image=None, text=None, dataset_rows=cache.dataset_rows.numpy(),
                                     index=cache.index, directory=Path(directory))
        self.name = directory
        self.n, self.dim = int(self._starts[-1]), cache.dim
        self.identity = f"cache {Path(directory).resolve()}"

    def _rows_of(self, rows: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            pick = shard == s
            local = rows[pick] - self._starts[s]
            out[pick] = self._images[s][local, 0].float().numpy()
        return unit_rows(out, self.name, int(rows[0]) if len(rows) else 0)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._rows_of(np.arange(start, stop))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self._rows_of(np.asarray(rows, dtype=np.int64))

    def names_of_images(self, kept_images: np.ndarray) -> np.ndarray:
        """Sorted names (dataset rows or keys) of every cache row whose image is kept."""
        kept = np.zeros(self.n, dtype=bool)
        kept[kept_images] = True
        return np.sort(self.cache.row_names()[kept[self.image_of_row]])


def open_rows(path: str | Path) -> RowSource:
    """The row source of a ``--embeddings`` argument: a teacher-cache directory or a ``.npy`` file."""
    return CacheImages(path) if is_cache(path) else NpyRows(path)
