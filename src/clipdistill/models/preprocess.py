"""Which preprocessing a set of weights expects, decided as open_clip's own tables decide it.

open_clip gives a model the preprocessing of its pretrained *tag* (``PE-Core-T-16-384`` + ``meta``:
mean = std = 0.5, bilinear, squash) only when it downloads that tag. Weights loaded from a file get
its random-init defaults (OpenAI statistics, bicubic, shortest side), silently wrong for SigLIP,
PE-Core, MobileCLIP2, DFN... This module decides for a file as the tag would, in this order:

1. an explicit override (``teacher.preprocess`` / ``student.preprocess``: mean, std, interpolation,
   resize_mode; the fields it gives win over everything below);
2. the pretrained tag named with the file (weights from the file, identity from the tag);
3. the architecture's tags, when they all agree (``list_pretrained_tags_by_model``);
4. the model config's ``preprocess_cfg`` (``open_clip_config.json`` of a ``local-dir:`` / ``hf-hub:``
   model), or open_clip's defaults for an architecture with no tags at all (what ``open_clip_train``
   and ``clipdistill train`` train it with);
5. otherwise nothing decides: one line naming the override to set.

The image *size* is always the model's own (its position embeddings fix it).
"""
from __future__ import annotations

from dataclasses import replace

import open_clip
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from clipdistill.errors import UserError
from clipdistill.models.spec import RESIZE_MODES, ImageSpec

FIELDS = ("mean", "std", "interpolation", "resize_mode")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def tag_preprocess(name: str, tag: str) -> dict:
    """The four preprocessing fields of open_clip's pretrained ``tag`` of ``name``; an unknown tag is one line."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"'{tag}' is not an open_clip pretrained tag of {name} (tags: {', '.join(tags) or 'none'})")
    return _fields(merge_preprocess_dict(PreprocessCfg(), cfg))


def agreed_tags_preprocess(name: str) -> tuple[dict | None, list[str]]:
    """``(fields, tags)``: the fields all of ``name``'s tags share (None if they disagree), and the tags."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    found = [tag_preprocess(name, tag) for tag in tags]
    agreed = found[0] if found and all(f == found[0] for f in found) else None
    return agreed, tags


def check_override(override: dict | None, setting: str) -> dict:
    """The override's fields, validated (unknown keys, modes and interpolations are one line each)."""
    override = dict(override or {})
    unknown = sorted(set(override) - set(FIELDS))
    if unknown:
        raise UserError(f"{setting} has unknown keys {unknown} (known: {', '.join(FIELDS)})")
    if "resize_mode" in override and override["resize_mode"] not in RESIZE_MODES:
        raise UserError(f"{setting}.resize_mode '{override['resize_mode']}' is not one of {', '.join(RESIZE_MODES)}")
    if "interpolation" in override and override["interpolation"] not in INTERPOLATIONS:
        raise UserError(f"{setting}.interpolation '{override['interpolation']}' is not one of "
                        f"{', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        if key in override:
            value = override[key]
            if not isinstance(value, (list, tuple)) or len(value) != 3 or \
                    not all(isinstance(v, (int, float)) for v in value):
                raise UserError(f"{setting}.{key} must be three numbers, got {value!r}")
            override[key] = tuple(float(v) for v in value)
    return override


def resolve_for_file(name: str, *, tag: str = "", config_preprocess: dict | None = None,
                     override: dict | None = None, setting: str = "teacher.preprocess") -> dict:
    """The four fields for weights of architecture ``name`` read from a file (see the module doc).

    Args:
        name: open_clip architecture name (built-in or registered preset).
        tag: the pretrained tag the weights are (``""``: not named).
        config_preprocess: a ``local-dir:``/``hf-hub:`` model's ``preprocess_cfg`` (None: built-in name).
        override: explicit fields (the ``setting`` config key), validated here.
        setting: the config key a user sets to decide, named in the error.
    """
    override = check_override(override, setting)
    if set(FIELDS) <= set(override):
        return override
    if tag:
        return {**tag_preprocess(name, tag), **override}
    if config_preprocess is not None:
        return {**_fields(merge_preprocess_dict(PreprocessCfg(), config_preprocess)), **override}
    agreed, tags = agreed_tags_preprocess(name)
    if agreed is not None:
        return {**agreed, **override}
    if not tags:
        return {**_fields(merge_preprocess_dict(PreprocessCfg(), {})), **override}
    raise UserError(f"{name}'s pretrained tags disagree on preprocessing ({_disagreement(name, tags)}): name the "
                    f"tag your weights are (teacher.pretrained / student.pretrained / openclip:{name}@TAG:FILE) "
                    f"or set {setting} (mean, std, interpolation, resize_mode)")


def folder_preprocess(config_preprocess: dict | None, where: str, override: dict | None, setting: str) -> dict:
    """A ``local-dir:``/``hf-hub:`` model's fields: its ``preprocess_cfg`` decides, or the override."""
    override = check_override(override, setting)
    if config_preprocess is None or not set(FIELDS) - {"resize_mode"} <= set(config_preprocess):
        if set(FIELDS) <= set(override):
            return override
        raise UserError(f"{where} has no complete preprocess_cfg (mean, std, interpolation) in open_clip_config.json:"
                        f" add one, or set {setting} (mean, std, interpolation, resize_mode)")
    return {**_fields(merge_preprocess_dict(PreprocessCfg(), config_preprocess)), **override}


def with_fields(spec: ImageSpec, fields: dict) -> ImageSpec:
    """``spec`` (the model's own size) with the resolved preprocessing fields."""
    changes = {k: tuple(float(v) for v in fields[k]) if k in ("mean", "std") else fields[k]
               for k in FIELDS if k in fields}
    return replace(spec, **changes)


def _fields(cfg: dict) -> dict:
    return {"mean": tuple(float(v) for v in cfg["mean"]), "std": tuple(float(v) for v in cfg["std"]),
            "interpolation": cfg["interpolation"], "resize_mode": cfg["resize_mode"]}


def _disagreement(name: str, tags: list[str]) -> str:
    groups: dict[str, list[str]] = {}
    for tag in tags:
        fields = tag_preprocess(name, tag)
        key = f"{fields['resize_mode']}/{fields['interpolation']}/mean {fields['mean'][0]:g}"
        groups.setdefault(key, []).append(tag)
    return "; ".join(f"{', '.join(t[:2])}{' ...' if len(t) > 2 else ''}: {key}" for key, t in groups.items())
