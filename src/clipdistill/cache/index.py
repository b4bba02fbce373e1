"""``index.npz``: sample key -> row of the cache, for lookups by the keys a training batch carries.

Rows number the samples in shard order (shard 0's rows first). The file holds the keys sorted
(fixed-width unicode, no pickle) and each key's row, so a batch of keys is found with one
``np.searchsorted``; no Python dict of millions of strings is built.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clipdistill.atomic import write_atomic
from clipdistill.errors import UserError

INDEX = "index.npz"


def write_index(directory: str | Path, keys_per_shard: list[list[str]]) -> int:
    """Index the shards' keys (in shard order); returns the sample count. Duplicate keys are refused."""
    keys = np.array([key for shard in keys_per_shard for key in shard], dtype=str)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    duplicate = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if duplicate.size:
        raise UserError(f"sample key '{sorted_keys[duplicate[0]]}' occurs more than once in the data; "
                        f"a cache needs unique keys")
    write_atomic(Path(directory) / INDEX, lambda file: np.savez(file, keys=sorted_keys, rows=order.astype(np.int64)),
                 per_process=True)
    return int(keys.size)


class KeyIndex:
    """Sorted keys and their rows; :meth:`rows` looks up many keys at once (-1 for an absent key)."""

    def __init__(self, sorted_keys: np.ndarray, rows: np.ndarray):
        self.sorted_keys, self.sorted_rows = sorted_keys, rows

    @classmethod
    def load(cls, directory: str | Path) -> "KeyIndex":
        path = Path(directory) / INDEX
        if not path.is_file():
            raise UserError(f"teacher cache {directory} has no {INDEX}: it is incomplete; re-run clipdistill cache")
        with np.load(path, allow_pickle=False) as data:
            return cls(data["keys"], data["rows"])

    def __len__(self) -> int:
        return int(self.sorted_keys.size)

    def rows(self, keys: list[str]) -> np.ndarray:
        if not len(self):
            return np.full(len(keys), -1, dtype=np.int64)
        query = np.asarray(keys, dtype=str)
        position = np.minimum(np.searchsorted(self.sorted_keys, query), len(self) - 1)
        found = self.sorted_keys[position] == query
        return np.where(found, self.sorted_rows[position], -1)

    def row(self, key: str) -> int:
        return int(self.rows([key])[0])
