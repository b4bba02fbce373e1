"""Reading weights files safely, whatever wrapper the training code put around them.

Released CLIP checkpoints come as a raw ``state_dict``, as ``{"state_dict": ...}`` (open_clip's
training script, CLIP-KD's teachers), as ``{"model": ...}`` (many other trainers), with the
``module.`` prefix DDP adds, or as ``.safetensors``. The CLIP-KD reference cannot load its own
released teachers; this loader takes all of these. It never unpickles code: ``torch.load`` always
runs with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from clipdistill.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped and with DDP's ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    loaded = _load_safetensors(path) if path.suffix == ".safetensors" else _load_torch(path)
    state_dict = _unwrap(loaded, path)
    return {_strip_ddp_prefix(key): value for key, value in state_dict.items()}


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


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any pickle that would import (and then call) something: exactly the
        # files that could run code on this machine. torch names the offending global in its message.
        offending = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), None)
        if offending is None:  # corrupt, not dangerous (and torch's own text would suggest weights_only=False)
            raise UserError(f"cannot read checkpoint {path}: not a torch.save or safetensors file, or corrupt") from None
        raise UserError(f"refusing to unpickle code from {path} ({offending}); re-save it as "
                        f"torch.save(model.state_dict(), ...) or as .safetensors") from None
    except Exception as err:  # torch raises KeyError, RuntimeError, EOFError... for a corrupt file
        raise UserError(f"cannot read checkpoint {path}: {_first_line(err)}") from None


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
