"""Read the embeddings to curate: a ``.npy`` file (N×D float) or, later, a teacher cache directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipdistill.errors import UserError

BLOCK = 65536


def load_unit_embeddings(path: str | Path, *, progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 rows scaled to unit length.

    float32 input is loaded once and normalized in place (peak memory: one copy of the data); other
    dtypes are memory-mapped and converted block by block into one float32 array.
    """
    path = Path(path)
    if path.is_dir():
        # TODO(cache): read image embeddings from a teacher-cache directory once clipdistill.cache has a
        # reader (being built in parallel); until then export them to .npy.
        raise UserError(f"{path} is a directory: teacher-cache input is not supported yet; pass a .npy file")
    if not path.is_file():
        raise UserError(f"embeddings file not found: {path}")
    try:
        raw = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err})") from None
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.floating) or len(raw) == 0:
        raise UserError(f"{path}: expected a non-empty (N, D) float array, got {raw.dtype} {raw.shape}")
    x = np.load(path) if raw.dtype == np.float32 else np.empty(raw.shape, dtype=np.float32)
    for start in tqdm(range(0, len(x), BLOCK), desc="normalize", unit="block", disable=not progress):
        block = x[start:start + BLOCK]
        if raw.dtype != np.float32:
            block[:] = raw[start:start + BLOCK]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise UserError(f"{path}: rows near {start} are zero or not finite")
        block /= norms
    return x
