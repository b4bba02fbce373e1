"""Reading a teacher cache: embeddings by sample key, and the stored views for the training loader.

:class:`TeacherCache` keeps every tensor of each safetensors shard as safetensors opens it,
memory-mapped (rows in shard order), and maps the key index too. Training gathers its batch's rows
and stored views from the maps (:meth:`TeacherCache.image_rows`, :meth:`TeacherCache.stored_views`),
so opening a cache costs no time and no RAM whatever its size, a cache bigger than RAM pages in on
demand, and the ranks of one node and their DataLoader workers share one copy in the page cache
instead of holding one each. ``numpy``-format shards are read into memory.

Rows are samples; a shard's ``image`` tensor may hold fewer entries than it has rows (rows showing
the same image share one, through ``image_row``). Everything this class hands out is per row.
"""
from __future__ import annotations

import weakref
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from clipdistill.cache import extras as extras_lib
from clipdistill.cache.index import KeyIndex
from clipdistill.cache.manifest import MANIFEST, read_manifest
from clipdistill.cache.storage import read_shard, shard_path
from clipdistill.errors import UserError


class CachedViews:
    """Sample key -> its stored views ``(V, 5)`` (int32 tensor), or None for a key not in the cache.

    What the DataLoader workers' datasets hold. It pickles as its cache, i.e. as the cache's directory
    (see :meth:`TeacherCache.__reduce__`), so a spawned worker shares one reopened cache, its key index
    and view table, with the worker's :class:`~clipdistill.targets.StoredRows`.
    """

    def __init__(self, cache: "TeacherCache"):
        self.cache = cache

    def get(self, key: str) -> torch.Tensor | None:
        row = self.cache.index.row(key)
        return None if row < 0 else self.cache.stored_views(row)


class TeacherCache:
    """A complete cache directory: embeddings memory-mapped per shard, small tables in memory.

    Attributes:
        manifest: the parsed ``manifest.json``.
        view: ``(N, V, 5)`` int32 view parameters; rows in shard order, found by :meth:`rows`. Read into
            memory on first use; :meth:`stored_views` reads one row's (what training does).
        dataset_rows: ``(N,)`` int64 dataset position of each row (the shards' ``index`` tensor; -1 for
            WebDataset input, which has no positions): what a keep list of cache rows maps through.
            Read into memory on first use.
        extras: name -> per-row tensor (e.g. ``"cluster"`` pseudo-labels), see :mod:`clipdistill.cache.extras`.

    Embeddings: :meth:`image_rows`/:meth:`text_rows` gather rows (what training does);
    :attr:`image` ``(N, V, D)`` and :attr:`text` ``(N, D)`` (storage dtype) read the whole cache into
    memory on first use, for consumers of all of it.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            raise UserError(f"teacher cache {self.directory} is incomplete: re-run the clipdistill cache command "
                            f"that started it (it resumes)")
        self.index = KeyIndex.load(self.directory)
        # safetensors memory-maps what it opens: a part costs nothing until its rows are read.
        parts = [read_shard(shard_path(self.directory, n, self.manifest["storage"]))[0]
                 for n in range(self.manifest["num_shards"])]
        self._image_parts = [p["image"] for p in parts]
        self._text_parts = [p["text"] for p in parts]
        # Format 1 stored one image entry per row.
        self._image_row_parts = [p.get("image_row", torch.arange(len(p["text"]))) for p in parts]
        sizes = np.array([len(p["text"]) for p in parts], dtype=np.int64)
        self._shard_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(parts) else sizes
        # Kept per shard, mapped like the embeddings (20 bytes a view, 8 a row: GBs at LAION scale).
        self._view_parts = [p["view"] for p in parts]
        self._dataset_row_parts = [p["index"] for p in parts]
        if int(sizes.sum()) != len(self.index):
            raise UserError(f"teacher cache {self.directory}: shards hold {int(sizes.sum())} samples, the index "
                            f"{len(self.index)}; rebuild it")
        self.extras = extras_lib.read_extras(self.directory, self.manifest)

    def __reduce__(self):
        # Pickled (to a spawned DataLoader worker) as its directory and reopened there: the maps are
        # shared through the page cache, not copied into the pickle.
        return _reopen, (str(self.directory),)

    def image_rows(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, D)``: the stored image embedding of view ``views[i]`` of row ``rows[i]``."""
        return self._gather(self._image_parts, rows, views)

    def text_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, D)``: the stored caption embedding of each row."""
        return self._gather(self._text_parts, rows, None)

    def stored_views(self, row: int) -> torch.Tensor:
        """``(V, 5)`` int32: the view parameters stored for ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} of a cache of {len(self)} rows")
        shard = int(np.searchsorted(self._shard_starts, row, side="right")) - 1
        return self._view_parts[shard][row - int(self._shard_starts[shard])]

    @cached_property
    def view(self) -> torch.Tensor:
        """``(N, V, 5)`` int32 view parameters of every row, in memory."""
        return _cat(self._view_parts, torch.zeros(0, self.views_per_sample, 5, dtype=torch.int32))

    @cached_property
    def dataset_rows(self) -> torch.Tensor:
        """``(N,)`` int64 dataset position of every row, in memory."""
        return _cat(self._dataset_row_parts, torch.zeros(0, dtype=torch.int64))

    def _gather(self, parts: list[torch.Tensor], rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        # The last shard starting at or before a row holds it (empty shards share their successor's start).
        shard_of = np.searchsorted(self._shard_starts, rows.numpy(), side="right") - 1
        if len(shard_of) and (shard_of == shard_of[0]).all():  # one shard: no per-shard masks
            return self._gather_one(parts, int(shard_of[0]), rows, views)
        out = torch.empty(len(rows), parts[0].shape[-1])  # dim, or 0 for the text of caption-free data
        for shard in np.unique(shard_of):
            pick = torch.from_numpy(shard_of == shard)
            out[pick] = self._gather_one(parts, int(shard), rows[pick], None if views is None else views[pick])
        return out

    def _gather_one(self, parts: list[torch.Tensor], shard: int, rows: torch.Tensor,
                    views: torch.Tensor | None) -> torch.Tensor:
        local = rows - int(self._shard_starts[shard])
        if views is None:
            return parts[shard][local].float()
        return parts[shard][self._image_row_parts[shard][local], views].float()

    @cached_property
    def image(self) -> torch.Tensor:
        """``(N, V, D)``, one entry per row (rows sharing an image get copies), in memory."""
        if not self._image_parts:
            return torch.empty(0, self.views_per_sample, self.dim)
        return torch.cat([part[rows] for part, rows in zip(self._image_parts, self._image_row_parts)])

    @cached_property
    def text(self) -> torch.Tensor:
        return torch.cat(self._text_parts) if self._text_parts else torch.empty(0, self.dim)

    def image_view(self, view: int) -> torch.Tensor:
        """``(N, D)`` view ``view`` of every image, in memory (without reading the other views)."""
        if not self._image_parts:
            return torch.empty(0, self.dim)
        return torch.cat([part[:, view][rows] for part, rows in zip(self._image_parts, self._image_row_parts)])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def views_per_sample(self) -> int:
        return int(self.manifest["augmentation"]["views"])

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(float(self.manifest["logit_scale"]))

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """The cached teacher's logit bias (0-d float32), None for a softmax teacher or an older cache."""
        bias = self.manifest.get("logit_bias")
        return None if bias is None else torch.tensor(float(bias))

    def rows(self, keys: list[str]) -> torch.Tensor:
        """Rows of ``keys`` (-1 where a key is not in the cache)."""
        return torch.from_numpy(self.index.rows(list(keys)))

    def views(self) -> CachedViews:
        return CachedViews(self)


def _cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts) if parts else empty


_REOPENED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _reopen(directory: str) -> TeacherCache:
    """One TeacherCache per directory and manifest version in this process, while something holds it.

    A spawned worker unpickles its dataset's views and the targets' stored rows apart; without this it
    would hold the key index and view table twice. A rewritten manifest (a new extra) opens anew.
    """
    path = Path(directory).resolve()
    try:
        stat = (path / MANIFEST).stat()
    except OSError as err:
        raise UserError(f"teacher cache {directory} cannot be reopened: {err.strerror or err}") from None
    key = (str(path), stat.st_ino, stat.st_mtime_ns)
    cache = _REOPENED.get(key)
    if cache is None:
        cache = _REOPENED[key] = TeacherCache(path)
    return cache
