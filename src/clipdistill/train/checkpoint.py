"""Checkpoints: written atomically, the last K kept, ``resume=latest`` finds the newest.

A checkpoint is a plain dict of tensors and primitives, loadable with ``weights_only=True``: loading
one never runs code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from clipdistill.errors import UserError

_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def save(state: dict, directory: Path, step: int, keep: int) -> Path:
    """Write to a temporary file and rename, so a kill mid-save leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    tmp = path.with_suffix(".pt.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {err.strerror or err}") from None
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str, directory: Path) -> Path | None:
    """``""`` -> None; ``"latest"`` -> newest checkpoint in the run (None if there is none yet); else a path."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"checkpoint to resume from not found: {path}")
    return path


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means we must not trust the file
        raise UserError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from None
