"""The run directory: refused when it already holds another run, cleared only when asked.

A second run into a used directory would overwrite its config and results, append to its metrics,
and let checkpoint pruning delete the new run's checkpoints while keeping the old run's. So a
directory that holds a run is continued (``resume=latest``) or started over (``--overwrite``, which
removes the old run's files first), never mixed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from clipdistill.errors import UserError
from clipdistill.train.checkpoint import list_checkpoints

# What a run writes; --overwrite removes exactly these (nothing else a user keeps in the directory).
RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "train.log")
RUN_FOLDERS = ("checkpoints", "tensorboard")


def existing_run(out_dir: Path) -> list[str]:
    """The run files ``out_dir`` holds already (empty for a new or empty directory)."""
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    checkpoints = list_checkpoints(out_dir / "checkpoints")
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s)")
    return found


def refuse_reuse(out_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """Stop, before anything is written, if ``out_dir`` holds a run this one would mix with."""
    found = existing_run(out_dir)
    if found and not resuming and not overwrite:
        raise UserError(f"run directory {out_dir} already holds a run ({', '.join(found)}): continue it with "
                        f"resume=latest, start over with --overwrite, or choose another --out")
    if resuming and overwrite:
        raise UserError("--overwrite starts the run over: it cannot be combined with resume")


def clear_run(out_dir: Path) -> None:
    """Remove an old run's files (``--overwrite``)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(out_dir / name, ignore_errors=True)


def create(out_dir: Path, write_config) -> None:
    """Make the directory and write the resolved config: the test that the run can write its outputs."""
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_config(out_dir / "config.yaml")
    except OSError as err:
        raise UserError(f"cannot write to run directory {out_dir}: {err.strerror or err}") from None
