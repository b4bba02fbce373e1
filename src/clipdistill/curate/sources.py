"""Read the embeddings to curate or cluster: a ``.npy`` file (N×D float) or a teacher-cache directory.

A cache (written by ``clipdistill cache``) holds rows in shard order, without the samples that were
skipped as bad, so its row numbers are not dataset rows: :class:`CacheEmbeddings` carries each row's
dataset position (the ``index`` tensor every shard stores) for whoever must name dataset rows.
"""
from __future__ import annotations

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


def load_unit_embeddings(path: str | Path, *, progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 rows of a ``.npy`` file, scaled to unit length.

    float32 input is loaded once and normalized in place (peak memory: one copy of the data); other
    dtypes are memory-mapped and converted block by block into one float32 array.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a .npy file (read a teacher cache with read_cache)")
    if not path.is_file():
        raise UserError(f"embeddings file not found: {path}")
    try:
        raw = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err})") from None
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.floating) or len(raw) == 0:
        raise UserError(f"{path}: expected a non-empty (N, D) float array, got {raw.dtype} {raw.shape}")
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
