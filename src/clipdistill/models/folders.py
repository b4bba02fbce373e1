"""open_clip models named by a folder (``local-dir:DIR``) or a Hugging Face Hub repo (``hf-hub:org/name``).

Both hold open_clip's own layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), one
weights file (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin`` ...) and, for models
whose ``text_cfg`` names an ``hf_tokenizer_name`` (SigLIP, MobileCLIP2, PE-Core...), the Hugging Face
tokenizer files. ``hf-hub:`` names download through open_clip (online only); ``local-dir:`` works
offline. Everything here only finds files and says clearly which one is missing; building the model
and the tokenizer stays open_clip's.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip

from clipdistill.errors import UserError

SCHEMAS = ("local-dir:", "hf-hub:")
CONFIG_FILE = "open_clip_config.json"
# open_clip's own preference order (factory._find_checkpoint_in_dir).
WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                 "model.pth")
# What transformers' AutoTokenizer can build a tokenizer from (fast JSON, BPE vocab, sentencepiece, wordpiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


def is_folder_name(model) -> bool:
    return isinstance(model, str) and model.startswith(SCHEMAS)


def local_dir(name: str) -> Path | None:
    """The folder of a ``local-dir:`` name (None for ``hf-hub:``); a missing folder is one line."""
    if not name.startswith("local-dir:"):
        return None
    path = Path(name[len("local-dir:"):])
    if not path.is_dir():
        raise UserError(f"{name}: folder not found")
    return path


def read_config(name: str) -> dict:
    """The whole ``open_clip_config.json`` (``model_cfg``, optional ``preprocess_cfg``)."""
    folder = local_dir(name)
    if folder is None:
        return _hub_config(name)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{name}: no {CONFIG_FILE} in the folder (an open_clip model folder holds {CONFIG_FILE}, "
                        f"weights and tokenizer files)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise UserError(f"{path} has no 'model_cfg' (open_clip's folder format: {{\"model_cfg\": ..., "
                        f"\"preprocess_cfg\": ...}})")
    return config


def weights_file(name: str) -> str:
    """The weights file of the folder (open_clip's preference order), or downloaded from the hub."""
    folder = local_dir(name)
    if folder is None:
        try:
            return open_clip.pretrained.download_pretrained_from_hf(name[len("hf-hub:"):])
        except Exception as err:  # network or hub errors alike
            raise UserError(f"could not fetch the weights of {name} ({_first_line(err)}); offline? download the "
                            f"repo and use local-dir:DIR") from None
    for candidate in WEIGHTS_FILES:
        if (folder / candidate).is_file():
            return str(folder / candidate)
    others = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth") and p.is_file())
    if len(others) == 1:
        return str(others[0])
    found = f"{len(others)} candidates: {', '.join(p.name for p in others)}" if others else "none"
    raise UserError(f"{name}: expected one weights file ({WEIGHTS_FILES[0]} or another of open_clip's names), "
                    f"found {found}")


def tokenizer(name: str, model_cfg: dict):
    """open_clip's tokenizer for the folder; a Hugging Face tokenizer must have its files in a ``local-dir:``."""
    folder = local_dir(name)
    hf_name = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if folder is not None and hf_name and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{name}: no tokenizer file in the folder (its text_cfg names the Hugging Face tokenizer "
                        f"'{hf_name}', so one of {', '.join(TOKENIZER_FILES)} must be there): save it with "
                        f"AutoTokenizer.from_pretrained('{hf_name}').save_pretrained(DIR)")
    try:
        return open_clip.get_tokenizer(name)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, TypeError...
        raise UserError(f"could not load the tokenizer of {name}: {_first_line(err)}") from None


def _hub_config(name: str) -> dict:
    try:
        config = open_clip.factory._get_hf_config(name[len("hf-hub:"):])
    except Exception as err:  # noqa: BLE001 - network, missing repo, bad JSON
        raise UserError(f"could not fetch {CONFIG_FILE} of {name} ({_first_line(err)}); offline? download the repo "
                        f"and use local-dir:DIR") from None
    return config if "model_cfg" in config else {"model_cfg": config}


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
