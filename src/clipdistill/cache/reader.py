"""Reading a teacher cache: embeddings by sample key, and the stored views for the training loader.

:class:`TeacherCache` loads the whole cache into memory (rows in shard order), which suits caches
up to some tens of millions of samples at fp16 (``(views + 1) * dim * 2`` bytes per sample: see
``docs/performance.md``); larger ones would want memory-mapped shards, which the format allows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipdistill.cache import extras as extras_lib
from clipdistill.cache.index import KeyIndex
from clipdistill.cache.manifest import read_manifest
from clipdistill.cache.storage import read_shard, shard_path
from clipdistill.errors import UserError


class CachedViews:
    """Sample key -> its stored views ``(V, 5)`` (int32 tensor), or None for a key not in the cache.

    Small (20 bytes per view) and picklable: this is what DataLoader workers get, not the embeddings.
    """

    def __init__(self, index: KeyIndex, views: np.ndarray):
        self.index, self.views = index, views

    def get(self, key: str) -> torch.Tensor | None:
        row = self.index.row(key)
        return None if row < 0 else torch.from_numpy(self.views[row])


class TeacherCache:
    """A complete cache directory, in memory.

    Attributes:
        manifest: the parsed ``manifest.json``.
        image: ``(N, V, D)`` stored image embeddings (storage dtype); ``text``: ``(N, D)``;
        view: ``(N, V, 5)`` int32 view parameters; rows in shard order, found by :meth:`rows`.
        dataset_rows: ``(N,)`` int64 dataset position of each row (the shards' ``index`` tensor; -1 for
            WebDataset input, which has no positions): what a keep list of cache rows maps through.
        extras: name -> per-row tensor (e.g. ``"cluster"`` pseudo-labels), see :mod:`clipdistill.cache.extras`.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            raise UserError(f"teacher cache {self.directory} is incomplete: re-run the clipdistill cache command "
                            f"that started it (it resumes)")
        self.index = KeyIndex.load(self.directory)
        parts = [read_shard(shard_path(self.directory, n, self.manifest["storage"]))[0]
                 for n in range(self.manifest["num_shards"])]
        self.image, self.text, self.view, self.dataset_rows = (
            torch.cat([p[name] for p in parts]) for name in ("image", "text", "view", "index"))
        if self.image.shape[0] != len(self.index):
            raise UserError(f"teacher cache {self.directory}: shards hold {self.image.shape[0]} samples, the index "
                            f"{len(self.index)}; rebuild it")
        self.extras = extras_lib.read_extras(self.directory, self.manifest)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def views_per_sample(self) -> int:
        return int(self.manifest["augmentation"]["views"])

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(float(self.manifest["logit_scale"]))

    def rows(self, keys: list[str]) -> torch.Tensor:
        """Rows of ``keys`` (-1 where a key is not in the cache)."""
        return torch.from_numpy(self.index.rows(list(keys)))

    def views(self) -> CachedViews:
        return CachedViews(self.index, self.view.numpy())
