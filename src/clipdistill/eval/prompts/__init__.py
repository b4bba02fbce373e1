"""Class names and prompt templates for zero-shot classification.

``imagenet`` is open_clip's own copy of OpenAI's 1000 class names and 80 templates (reused, not
copied), in class-index order, which is the order of the sorted WordNet ids shipped here in
``imagenet_wnids.txt`` (timm's ``imagenet_synsets.txt``): so a folder named ``n01440764`` is
"tench". ``cifar10`` ships here as JSON (CLIP_benchmark's English prompts). A user file works too:
a JSON ``{"classnames": [...], "templates": [...]}`` or a text file with one entry per line.
"""
from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path

import open_clip

from clipdistill.errors import UserError

BUILT_IN = ("imagenet", "cifar10")
_WORDNET_ID = re.compile(r"n\d{8}")
_FILE_FORMATS = 'a text file with one name per line, or a JSON file {"classnames": [...], "templates": [...]}'


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


@cache
def imagenet_wordnet_ids() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids, sorted: index i is class i of :func:`classnames` ``("imagenet")``."""
    return tuple(resources.files(__package__).joinpath("imagenet_wnids.txt").read_text().split())


def are_wordnet_ids(names: list[str]) -> bool:
    return bool(names) and all(_WORDNET_ID.fullmatch(name) for name in names)


def imagenet_names_of(wordnet_ids: list[str], where: str = "names") -> list[str]:
    """ImageNet's class name for each WordNet id; one line naming the ids that are not ImageNet-1k's."""
    index = {wnid: i for i, wnid in enumerate(imagenet_wordnet_ids())}
    unknown = [wnid for wnid in wordnet_ids if wnid not in index]
    if unknown:
        raise UserError(f"{len(unknown)} {where} look like WordNet ids but are not ImageNet-1k classes "
                        f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}): give --classnames FILE "
                        f"({_FILE_FORMATS}), one name per folder in sorted folder order")
    names = classnames("imagenet")
    return [names[index[wnid]] for wnid in wordnet_ids]


def _from_file(path: str, key: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{key} '{path}' is neither a built-in set ({', '.join(BUILT_IN)}) nor a file "
                        f"(use {' or '.join(BUILT_IN)}, {_FILE_FORMATS})")
    text = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}); {key} files are {_FILE_FORMATS}") from None
        entries = data.get(key) if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise UserError(f"{path} has no '{key}' list ({key} files are {_FILE_FORMATS})")
        return [str(entry) for entry in entries]
    return [line.strip() for line in text.splitlines() if line.strip()]
