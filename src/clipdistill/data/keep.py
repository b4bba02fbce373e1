"""``data.keep`` for map-style datasets: ``clipdistill curate``'s keep list as dataset rows.

(Shards keep sample keys instead: :class:`~clipdistill.data.shards.KeptKeys`.)
"""
from __future__ import annotations

import numpy as np

from clipdistill.errors import UserError


def kept_rows(keep, size: int, limit: int, name: str) -> np.ndarray | None:
    """A keep list (rows or a .npy path) as sorted unique rows below ``limit``; None when there is none."""
    if keep is None:
        return None
    if isinstance(keep, str) or hasattr(keep, "__fspath__"):
        try:
            keep = np.load(keep)
        except (OSError, ValueError) as err:
            raise UserError(f"data.keep: cannot read {keep} as a .npy array of row indices ({err})") from None
    rows = np.unique(np.asarray(keep))
    if rows.dtype.kind in "US":
        raise UserError(f"data.keep lists sample keys (curated from a teacher cache of WebDataset shards): it "
                        f"applies to webdataset data, not to {name}")
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (len(rows) and (rows[0] < 0 or rows[-1] >= size)):
        raise UserError(f"data.keep must list integer rows of {name} (0..{size - 1}); got {rows.dtype} "
                        f"{rows.min() if rows.size else ''}..{rows.max() if rows.size else ''}")
    return rows[rows < limit].astype(np.int64)
