"""Checkpoints: written atomically, the last K kept, ``resume=latest`` finds the newest readable one.

A checkpoint is a plain dict of tensors and primitives, loadable with ``weights_only=True``: loading
one never runs code.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from clipdistill.atomic import write_atomic
from clipdistill.errors import UserError
from clipdistill.models.checkpoints import list_checkpoints, load_untrusted

log = logging.getLogger("clipdistill.train")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def save(state: dict, directory: Path, step: int, keep: int) -> Path:
    """Write to a temporary file and rename, so a kill mid-save leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    write_atomic(path, lambda file: torch.save(state, file), what="checkpoint")
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


def load_resume(resume: str, directory: Path) -> tuple[Path, dict] | None:
    """The checkpoint ``resume`` names, loaded; None when there is nothing to resume from.

    With ``latest``, an unreadable newest checkpoint (truncated by a crash of the machine, say) is
    reported and the one before it is used: a run loses the steps since then, never the run.
    """
    path = resolve_resume(resume, directory)
    if path is None or resume != "latest":
        return None if path is None else (path, load(path))
    for candidate in reversed(list_checkpoints(directory)):
        try:
            return candidate, load(candidate)
        except UserError as err:
            log.warning("%s; trying the checkpoint before it", err)
    raise UserError(f"no readable checkpoint in {directory} to resume from")


def load(path: Path) -> dict:
    """A checkpoint, read as every file from elsewhere is (never runs code; one line if unreadable)."""
    return load_untrusted(path)
