"""Checkpoints: written atomically, the last K kept, ``resume=latest`` finds the newest readable one.

A checkpoint is a plain dict of tensors and primitives, loadable with ``weights_only=True``: loading
one never runs code. Its schema lives here, in :func:`save_run` and :func:`restore_run`, side by side:

    step               the number of optimizer steps done (the lr is a function of it)
    student            the student's state_dict (what ``clipdistill export`` and a teacher read)
    objective          the objective's: projection heads, learnable scales
    optimizer          AdamW's state
    rng                torch's CPU RNG state
    bad_data           the run's skipped-sample counts over all ranks (BadDataTally.state)
    skipped_nonfinite  steps skipped for a non-finite loss (train.skip_nonfinite)
    data               where the data stream stands (TrainBatches.state, every rank's shard readers)
    config             the resolved config (its student section rebuilds the architecture)
    rank_shards        {"world_size": W} when the objective holds tensors split across ranks
                       (cid_cluster's centres): those tensors and their optimizer moments are left
                       out of ``objective`` and ``optimizer`` and live in ``step_N.rank{r}.pt``, one
                       per rank (its rows and moments), written before the main file; resuming
                       needs the same world size (one line otherwise: no resharding)
    student_build      only for a student with a tower of its teacher: its architecture and preprocessing
                       (models.towers), which the config alone cannot rebuild without the teacher
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from clipdistill import distributed
from clipdistill.atomic import write_atomic
from clipdistill.errors import UserError
from clipdistill.models.checkpoints import list_checkpoints, load_untrusted
from clipdistill.train.optim import load_optimizer_state

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
    # Rank files whose main file is gone: rotated out, or left by a kill between the ranks' writes and
    # the main rank's (every rank has written before the main file, so none of this step's is at risk).
    for shard in directory.glob("step_*.rank*.pt"):
        if not (directory / (shard.name.split(".")[0] + ".pt")).exists():
            shard.unlink(missing_ok=True)
    return path


def rank_shard_path(path: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its shard of checkpoint ``path`` (``list_checkpoints`` does not list it)."""
    return path.with_name(f"{path.stem}.rank{rank}.pt")


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


@dataclass
class Restored:
    """What a resumed run continues from, besides the weights and moments restored in place."""

    path: Path
    step: int
    bad_data: dict
    skipped_nonfinite: int
    data: dict


def save_run(directory: Path, *, step: int, distiller, optimizer, bad_data: dict, skipped_nonfinite: int,
             data: dict, config: dict, keep: int, student_build: dict | None = None) -> Path:
    """Write the run's state at ``step`` (call on the main rank only, after every rank's :func:`save_rank_shard`)."""
    objective = distiller.objective.state_dict()
    shards = _saved_shards(objective, distiller)
    objective = {k: v for k, v in objective.items() if k not in shards}
    optimizer_state = optimizer.state_dict()
    moments = set(_shard_moment_ids(optimizer_state))
    kept = {i: v for i, v in optimizer_state["state"].items() if i not in moments}
    optimizer_state = {**optimizer_state, "state": kept}
    state = {"step": step, "student": distiller.student.state_dict(), "objective": objective,
             "optimizer": optimizer_state, "rng": torch.get_rng_state(), "bad_data": bad_data,
             "skipped_nonfinite": skipped_nonfinite, "data": data, "config": config}
    if shards:
        state["rank_shards"] = {"world_size": distributed.world_size()}
    if student_build:
        state["student_build"] = student_build
    return save(state, directory, step, keep=keep)


def save_rank_shard(directory: Path, *, step: int, distiller, optimizer) -> Path | None:
    """Write this rank's rows of the rank-sharded tensors and their optimizer moments (every rank calls
    it, before the main rank's :func:`save_run`); None when the objective holds no such tensors."""
    objective = distiller.objective.state_dict()
    shards = _saved_shards(objective, distiller)
    if not shards:
        return None
    optimizer_state = optimizer.state_dict()
    state = {"step": step, "world_size": distributed.world_size(),
             "objective": {name: objective[name] for name in shards},
             "optimizer": {i: optimizer_state["state"][i] for i in _shard_moment_ids(optimizer_state)
                           if i in optimizer_state["state"]}}
    directory.mkdir(parents=True, exist_ok=True)
    path = rank_shard_path(checkpoint_path(directory, step), distributed.rank())
    write_atomic(path, lambda file: torch.save(state, file), what="checkpoint")
    return path


def _saved_shards(objective_state: dict, distiller) -> list[str]:
    # The rank shards a checkpoint stores: fixed label centres are a non-persistent buffer (rebuilt
    # from the centroids file), so a run with fixed centres has nothing per rank to save.
    return [name for name in distributed.rank_shard_names(distiller.objective) if name in objective_state]


def _shard_moment_ids(optimizer_state: dict) -> list[int]:
    # build_optimizer puts the rank shards in a group of their own, marked rank_shard.
    return [i for group in optimizer_state["param_groups"] if group.get("rank_shard") for i in group["params"]]


def restore_run(resume: str, directory: Path, distiller, optimizer) -> Restored | None:
    """Load the checkpoint ``resume`` names into ``distiller`` and ``optimizer`` (and torch's RNG).

    None when there is nothing to resume from (``resume`` empty, or ``latest`` in a new run).
    A checkpoint of another architecture is one line naming both.
    """
    found = load_resume(resume, directory)
    if found is None:
        return None
    path, state = found
    state = _with_rank_shard(state, path)
    _load_weights(distiller, state, path)
    try:
        load_optimizer_state(optimizer, state["optimizer"])
    except ValueError as err:  # torch: another number or size of parameter groups
        raise UserError(f"cannot resume from {path}: its optimizer state does not fit this run's parameters "
                        f"({err}); resume with the config it was trained with") from None
    torch.set_rng_state(state["rng"])
    return Restored(path=path, step=state["step"], bad_data=state["bad_data"],
                    skipped_nonfinite=state.get("skipped_nonfinite", 0), data=state.get("data", {}))


def _with_rank_shard(state: dict, path: Path) -> dict:
    """The checkpoint with this rank's shard file merged back into ``objective`` and ``optimizer``."""
    record = state.get("rank_shards")
    if record is None:  # nothing sharded (or a checkpoint from before sharding: everything is in it)
        return state
    world, rank = distributed.world_size(), distributed.rank()
    if record["world_size"] != world:
        raise UserError(f"cannot resume from {path}: its cid_cluster centres are split over {record['world_size']} "
                        f"ranks and this run has {world}; resume with {record['world_size']} processes "
                        "(resharding is not supported)")
    shard_file = rank_shard_path(path, rank)
    if not shard_file.is_file():
        raise UserError(f"cannot resume from {path}: rank {rank}'s shard of it ({shard_file.name}) is missing")
    shard = load(shard_file)
    optimizer_state = {**state["optimizer"], "state": {**state["optimizer"]["state"], **shard["optimizer"]}}
    return {**state, "objective": {**state["objective"], **shard["objective"]}, "optimizer": optimizer_state}


def _load_weights(distiller, state: dict, path: Path) -> None:
    try:
        distiller.student.load_state_dict(state["student"])
        distiller.objective.load_state_dict(state["objective"])
    except RuntimeError as err:  # torch lists every mismatching key over many lines
        saved = (state.get("config") or {}).get("student", {}).get("model", "?")
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines or [type(err).__name__])[0]
        raise UserError(f"cannot resume from {path}: it holds a student of architecture {saved!r} (or other loss "
                        f"heads) that does not fit this run's ({detail[:160]}); resume with the config it was "
                        f"trained with, or start a new run directory") from None
