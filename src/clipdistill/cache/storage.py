"""One cache shard on disk: a few named tensors plus JSON metadata (the sample keys...), in one file,
written atomically.

Two encodings, neither of which can run code when read (no pickle):

- ``safetensors`` (default): the tensors, with the metadata as JSON in the header;
- ``numpy``: an uncompressed ``.npz`` with the metadata as a JSON string array ``meta``
  (``np.load(allow_pickle=False)`` reads it). numpy has no bfloat16, so ``numpy`` + ``bf16`` is refused.

A shard file exists only once it is complete (temporary name, then rename): resuming a killed
``clipdistill cache`` trusts every shard file it finds and rewrites the others.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from clipdistill.atomic import write_atomic
from clipdistill.errors import UserError

FORMATS = {"safetensors": ".safetensors", "numpy": ".npz"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def check_encoding(storage: str, dtype: str) -> None:
    if storage not in FORMATS:
        raise UserError(f"unknown cache format '{storage}' (choose from {', '.join(FORMATS)})")
    if dtype not in DTYPES:
        raise UserError(f"unknown cache dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    if storage == "numpy" and dtype == "bf16":
        raise UserError("cache.dtype=bf16 needs cache.format=safetensors (numpy has no bfloat16)")


def shard_path(directory: Path, number: int, storage: str) -> Path:
    return Path(directory) / f"shard_{number:06d}{FORMATS[storage]}"


def write_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict, storage: str) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` (``{"keys": [...], ...}``) to ``path`` all-or-nothing."""
    write_atomic(path, lambda file: _serialize(file, tensors, meta, storage), what="cache shard", per_process=True)


def _serialize(file, tensors: dict[str, torch.Tensor], meta: dict, storage: str) -> None:
    if storage == "safetensors":
        from safetensors.torch import save

        file.write(save({k: v.contiguous() for k, v in tensors.items()}, metadata={"meta": json.dumps(meta)}))
    else:
        np.savez(file, meta=np.array(json.dumps(meta)), **{k: v.numpy() for k, v in tensors.items()})


def read_shard(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of one shard file (either encoding, told apart by the suffix)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {name: f.get_tensor(name) for name in f.keys()}, json.loads(f.metadata()["meta"])
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return {name: torch.from_numpy(data[name].copy()) for name in data.files if name != "meta"}, meta
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise UserError(f"cannot read cache shard {path}: {err}") from None


def read_meta(path: Path) -> dict:
    """Only the metadata of a shard (the safetensors header is read without the tensors)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return json.loads(f.metadata()["meta"])
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise UserError(f"cannot read cache shard {path}: {err}") from None
