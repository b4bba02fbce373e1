"""Reading weights files safely, whatever wrapper the training code put around them.

Released CLIP checkpoints come as a raw ``state_dict``, as ``{"state_dict": ...}`` (open_clip's
training script, CLIP-KD's teachers), as ``{"model": ...}`` (many other trainers), with the
``module.`` prefix DDP adds, or as ``.safetensors``. The CLIP-KD reference cannot load its own
released teachers; this loader takes all of these, and clipdistill's own run checkpoints (a file
``RUN/checkpoints/step_N.pt`` or the run directory ``RUN``, meaning its newest checkpoint): their
student's weights, with the architecture their stored config names.

Every file from elsewhere (weights, checkpoints to resume from) is read by :func:`load_untrusted`,
which never unpickles code: ``torch.load`` always runs with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from clipdistill.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."
_STEP_NAME = re.compile(r"step_(\d+)\.pt$")


@dataclass
class Weights:
    """What a weights file holds: the tensors, and the architecture when the file names it."""

    state_dict: dict[str, torch.Tensor]
    file: Path  # the file read (a run directory's newest checkpoint)
    architecture: str | dict | None = None  # a run checkpoint's ``config.student.model``; None for plain weights


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped and with DDP's ``module.`` prefixes removed."""
    return read_weights(path).state_dict


def read_weights(path: str | Path) -> Weights:
    """A weights file in any supported format, or a clipdistill run checkpoint or run directory."""
    path = newest_checkpoint_if_run(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    loaded = _load_safetensors(path) if path.suffix == ".safetensors" else load_untrusted(path)
    architecture = None
    if is_run_checkpoint(loaded):  # train/checkpoint.py's schema: the student's weights beside its config
        architecture, loaded = _stored_architecture(loaded, path), loaded["student"]
    state_dict = _unwrap(loaded, path)
    return Weights({_strip_ddp_prefix(key): value for key, value in state_dict.items()}, path, architecture)


def is_run_checkpoint(loaded) -> bool:
    return isinstance(loaded, Mapping) and isinstance(loaded.get("student"), Mapping) \
        and isinstance(loaded.get("config"), Mapping)


def _stored_architecture(state: Mapping, path: Path):
    try:
        return state["config"]["student"]["model"]
    except (KeyError, TypeError):
        raise UserError(f"run checkpoint {path} stores no config.student.model (its architecture)") from None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """A run's checkpoints in ``directory`` (``step_N.pt``), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint_if_run(path: str | Path) -> Path:
    """``path`` unless it is a directory; a clipdistill run directory (or its ``checkpoints/``) gives its
    newest checkpoint, any other directory is a one-line error."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise UserError(f"{path} is a directory without clipdistill run checkpoints (checkpoints/step_N.pt): "
                        f"give a run directory that has saved one, a checkpoint file or a weights file")
    return found[-1]


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (teacher checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise UserError(f"cannot read safetensors file {path}: {err}") from None


def load_untrusted(path: str | Path):
    """``torch.load`` of a file from elsewhere (weights, a checkpoint to resume from): tensors and plain
    containers only. Anything else is one line: pickled code is refused, a corrupt file named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any pickle that would import (and then call) something: exactly the
        # files that could run code on this machine. torch names the offending global in its message;
        # its first line would suggest weights_only=False, the one thing not to do, so it is not shown.
        offending = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), None)
        if offending is None:  # corrupt, not dangerous
            raise UserError(f"cannot load checkpoint {path}: not a torch.save or safetensors file, or corrupt") from None
        raise UserError(f"refusing to load checkpoint {path}: it holds pickled code, not only tensors ({offending}); "
                        f"re-save it as torch.save(model.state_dict(), ...) or as .safetensors") from None
    except Exception as err:  # noqa: BLE001 - torch raises KeyError, RuntimeError, EOFError... for a corrupt file
        raise UserError(f"cannot load checkpoint {path}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _unwrap(loaded, path: Path) -> Mapping[str, torch.Tensor]:
    # Trainers nest the weights under "state_dict" or "model", sometimes with optimizer state beside.
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not loaded:
        raise UserError(f"checkpoint {path} holds no state_dict (found {type(loaded).__name__})")
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"checkpoint {path} is not a state_dict: entries {not_tensors[:5]} are not tensors")
    return loaded


def _strip_ddp_prefix(key: str) -> str:
    while key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX):]
    return key


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state_dict`` into ``model`` strictly; a mismatch is a UserError naming the keys."""
    state_dict = dict(state_dict)
    own = model.state_dict()
    # open_clip stores logit_scale as a 0-d tensor in some versions and as shape (1,) in others.
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
            state_dict[key] = state_dict[key].reshape(own[key].shape)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        raise UserError(f"weights in {source} do not fit the model: {_describe(missing, 'missing')}"
                        f"{_describe(unexpected, 'unexpected')}{_describe(wrong_shape, 'wrong shape')}".rstrip("; "))
    model.load_state_dict(state_dict, strict=True)


def _describe(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{len(keys)} {what} {keys[:3]}{more}; "
