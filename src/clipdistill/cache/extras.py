"""The slot for per-sample extras in a teacher cache, e.g. CLIP-CID's cluster pseudo-labels.

An extra ``NAME`` is the file ``extras/NAME.safetensors`` holding ``values``: one entry per cache
row, in row order (the order of the shards, as :class:`~clipdistill.cache.reader.TeacherCache`
loads them), plus any other tensors that belong with it (for clusters: ``centroids`` ``(K, D)``).
The manifest's ``extras`` section lists each one with a free-form description. Training from the
cache puts ``values`` of the batch's rows in ``Embeddings.extras[NAME]`` (``"cluster"`` is the name
the CID losses read).
"""
from __future__ import annotations

from pathlib import Path

import torch

from clipdistill.cache import manifest as manifest_lib
from clipdistill.errors import UserError

EXTRAS_DIR = "extras"


def write_extra(directory: str | Path, name: str, values: torch.Tensor, description: str = "",
                **companions: torch.Tensor) -> None:
    """Store ``values`` (first dim = the cache's sample count) as extra ``name`` and list it in the manifest."""
    from safetensors.torch import save_file

    directory = Path(directory)
    manifest = manifest_lib.read_manifest(directory)
    if values.shape[0] != manifest["count"]:
        raise UserError(f"extra '{name}' has {values.shape[0]} rows, the cache {manifest['count']} samples")
    (directory / EXTRAS_DIR).mkdir(exist_ok=True)
    tensors = {"values": values, **companions}
    path = directory / EXTRAS_DIR / f"{name}.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))
    manifest["extras"][name] = {"file": f"{EXTRAS_DIR}/{name}.safetensors", "tensors": sorted(tensors),
                                "description": description}
    manifest_lib.write_manifest(directory, manifest)


def read_extras(directory: str | Path, manifest: dict) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"values": ..., companions...} for every extra the manifest lists."""
    from safetensors.torch import load_file

    return {name: load_file(str(Path(directory) / entry["file"])) for name, entry in manifest.get("extras", {}).items()}
