"""Class names and prompt templates for zero-shot classification.

``imagenet`` is open_clip's own copy of OpenAI's 1000 class names and 80 templates (reused, not
copied); ``cifar10`` ships here as JSON (CLIP_benchmark's English prompts). A user file works too:
a JSON ``{"classnames": [...], "templates": [...]}`` or a text file with one entry per line.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import open_clip

from clipdistill.errors import UserError

BUILT_IN = ("imagenet", "cifar10")


def _shipped(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text())


def classnames(name: str) -> list[str]:
    """The class names of a built-in set (``imagenet``, ``cifar10``) or of a file."""
    if name == "imagenet":
        return list(open_clip.IMAGENET_CLASSNAMES)
    if name == "cifar10":
        return _shipped("cifar10")["classnames"]
    return _from_file(name, "classnames")


def templates(name: str) -> list:
    """Prompt templates (``{c}``/``{}`` strings or open_clip's callables) of a built-in set or a file."""
    if name == "imagenet":
        return list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    if name == "cifar10":
        return _shipped("cifar10")["templates"]
    return _from_file(name, "templates")


def _from_file(path: str, key: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{key} '{path}' is neither a built-in set ({', '.join(BUILT_IN)}) nor a file")
    text = file.read_text()
    if file.suffix == ".json":
        data = json.loads(text)
        entries = data.get(key) if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise UserError(f"{path} has no '{key}' list")
        return [str(entry) for entry in entries]
    return [line.strip() for line in text.splitlines() if line.strip()]
