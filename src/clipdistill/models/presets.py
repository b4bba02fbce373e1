"""Model architectures by name: clipdistill's tiny presets, open_clip's names, inline configs.

Everything here ends as an open_clip architecture *name*, because that is what
``open_clip.create_model`` and ``open_clip.get_tokenizer`` take. Presets and inline dicts are written
as JSON files and registered with open_clip's public ``add_model_config``, so model construction,
tokenizer choice and checkpoint format stay open_clip's own.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import open_clip

from clipdistill.atomic import write_text_atomic
from clipdistill.errors import UserError

# open_clip's BPE tokenizer has 49408 tokens; every preset uses it so any open_clip tokenizer fits.
_TEXT_VOCAB = 49408
_CONTEXT = 32  # the synthetic captions are short; 32 tokens keeps the text tower cheap

PRESETS: dict[str, dict] = {
    # The student of tests and the demo: a 2-layer ViT on 32 px images (4x4 patches of 8 px).
    "tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": _CONTEXT, "vocab_size": _TEXT_VOCAB, "width": 64, "heads": 2, "layers": 2},
    },
    # A larger teacher of the same family. Its embed_dim differs from the student's on purpose, so
    # the projection heads of fd/icl/... are always exercised when the two are paired.
    "tiny-teacher": {
        "embed_dim": 96,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
        "text_cfg": {"context_length": _CONTEXT, "vocab_size": _TEXT_VOCAB, "width": 128, "heads": 4, "layers": 4},
    },
    # A non-ViT student (open_clip's ModifiedResNet): proves nothing assumes patches or a class token.
    "tiny-rn": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": _CONTEXT, "vocab_size": _TEXT_VOCAB, "width": 64, "heads": 2, "layers": 2},
    },
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def resolve_architecture(model: str | dict) -> str:
    """The open_clip architecture name for a preset name, an open_clip name or an inline config dict.

    Presets and dicts are registered with open_clip on first use. Unknown names raise
    :class:`UserError` listing the closest known names.
    """
    if isinstance(model, dict):
        return register_config(model)
    if not isinstance(model, str) or not model:
        raise UserError(f"model must be a preset name, an open_clip model name or a config dict, got {model!r}")
    if model in PRESETS:
        return register_config(PRESETS[model], name=model)
    if open_clip.get_model_config(model) is not None:
        return model
    known = list_presets() + open_clip.list_models()
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_presets())}"
    raise UserError(f"unknown model '{model}'{hint}")


def register_config(config: dict, name: str | None = None) -> str:
    """Register an open_clip model config with open_clip and return the name it is known by.

    The JSON file lives in a directory named by the config's content hash, so a changed preset or a
    different inline dict can never be confused with a stale file, and concurrent processes (DDP
    ranks) writing the same config write identical bytes.
    """
    _check_schema(config)
    text = json.dumps(config, sort_keys=True, indent=2)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    name = name or f"inline-{digest}"
    path = _config_dir() / digest / f"{name}.json"
    if open_clip.get_model_config(name) == json.loads(text):
        return name  # already registered in this process
    path.parent.mkdir(parents=True, exist_ok=True)
    # Another rank may read the file while this one writes it: rename makes the write all-or-nothing.
    write_text_atomic(path, text, per_process=True)
    open_clip.add_model_config(path)
    return name


def _check_schema(config: dict) -> None:
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise UserError(f"inline model config lacks open_clip key(s) {', '.join(missing)} "
                        f"(it needs embed_dim, vision_cfg and text_cfg)")


def _config_dir() -> Path:
    # A cache, not state: anything here can be deleted; it is re-written on next use.
    root = os.environ.get("CLIPDISTILL_CACHE") or Path(tempfile.gettempdir()) / "clipdistill"
    return Path(root) / "open_clip_configs"


def preset_config(name: str) -> dict:
    """A copy of a preset's open_clip config (for export or editing into an inline config)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}' (available: {', '.join(list_presets())})")
    return copy.deepcopy(PRESETS[name])
