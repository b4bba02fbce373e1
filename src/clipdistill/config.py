"""Experiment configuration: a typed dataclass schema, YAML files, dotted ``key=value`` overrides.

A config is read from YAML (a ``yaml.SafeLoader``: nothing in it is ever evaluated as code; booleans are
only ``true``/``false``, as in YAML 1.2, so ``train.compile: off`` is the string its schema expects), itself merged over
the file its ``base:`` key names, if any (relative to it: ``base: baseline.yaml``), then merged with
command-line overrides such as ``train.steps=500`` or ``losses.fd.weight=2``, and checked against the
schema below: an unknown key or a value of the wrong type stops with one line naming the key. The
resolved config is written to the run directory and into every checkpoint.

Components never see this module: builders unpack fields into plain keyword arguments.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from clipdistill.errors import ConfigError

class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans: PyYAML's 1.1 rules also read on/off/yes/no as booleans, which turned
    ``train.compile=off`` into ``False`` and stopped the run with a type error."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


ModelSpec = Union[str, dict]  # an open_clip architecture name, a clipdistill preset, or an inline open_clip config


@dataclass
class StudentConfig:
    model: ModelSpec = "tiny"
    pretrained: str = ""  # open_clip tag or local file; empty = random init (the usual for distillation)
    preprocess: dict = field(default_factory=dict)  # mean/std/interpolation/resize_mode over the resolved ones
    # student | teacher: reuse the teacher's text (image) tower, frozen; the other tower trains into the
    # teacher's embedding space (its embed_dim). Caption-free data needs text_tower: teacher.
    text_tower: str = "student"
    image_tower: str = "student"  # student | teacher (the teacher's image tower, frozen; its preprocessing)


@dataclass
class TeacherConfig:
    source: str = "none"  # none | openclip | checkpoint | hf | cache
    model: ModelSpec = ""  # architecture for openclip/checkpoint sources
    pretrained: str = ""  # open_clip tag (openclip source); checkpoint source: the tag the file is (its preprocessing)
    preprocess: dict = field(default_factory=dict)  # mean/std/interpolation/resize_mode where open_clip's tables can't decide
    path: str = ""  # checkpoint file (checkpoint source) or Hugging Face CLIPModel directory (hf source)
    # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 (autocast on any device: faster on CPUs with
    # AVX512-BF16/AMX; the student's own precision is train.precision)
    precision: str = "auto"
    # source=cache (path: a `clipdistill cache` directory): strict = a sample missing from the cache is an
    # error; hybrid = missing samples are embedded live by the teacher the manifest names.
    cache_mode: str = "strict"
    # in an ensemble (teachers:): this teacher's share of every distillation term (normalized over the teachers)
    weight: float = 1.0
    # its softmax scale τ, multiplying its cosines (τ·t_v·t_tᵀ) wherever a loss reads its logit scale; null = its own
    temperature: Union[float, None] = None


@dataclass
class CacheConfig:
    """``clipdistill cache``: how the teacher-embedding cache is written (see clipdistill.cache)."""

    views: int = 1  # augmented views stored per sample (replayed in training)
    dtype: str = "fp16"  # fp16 | bf16 | fp32
    format: str = "safetensors"  # safetensors | numpy
    shard_size: int = 10000  # samples per cache shard (the unit of resume and of rank splitting)
    batch_size: int = 256  # teacher batch
    seed: int = 0  # seeds the stored views


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | csv | webdataset | folder (images only, no captions)
    path: str = ""  # CSV/TSV file, a brace pattern of tar shards (without .txt members: images only), or a folder
    num_samples: int = 20000  # size of the synthetic corpus
    subset: int = 0  # train on the first N samples only (0 = all); map-style datasets
    seed: int = 0  # data generation seed (synthetic)
    image_key: str = "filepath"
    caption_key: str = "title"
    separator: str = "auto"  # auto (the header's tabs or commas, else .tsv: tab, .csv/other: comma) | tab | comma | one character
    workers: Union[int, str] = "auto"  # DataLoader workers; auto: a quarter of the cores on CPU, all but one with a GPU
    scale: list = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop scale range
    hflip: bool = False
    max_bad_fraction: float = 0.05  # abort when more than this fraction of samples is unreadable
    keep: str = ""  # `clipdistill curate`'s keep.npy: dataset rows (synthetic, csv) or sample keys (webdataset)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 128  # per rank (the whole accumulated batch)
    accum_steps: int = 1  # split each batch into this many micro-batches (exact for every loss)
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: str = ""  # "" | latest | path to a checkpoint
    skip_nonfinite: int = 0  # skip (don't apply, count, log) up to N steps whose loss is NaN/inf; then stop
    progress: bool = True
    # intra-op CPU threads; 0 = OMP_NUM_THREADS if set, else the usable cores less those data.workers=auto takes
    threads: int = 0
    # local rows x global columns in every contrastive term (logit memory linear in the global batch):
    # true | false | auto (on when there is more than one rank)
    local_loss: Union[bool, str] = "auto"
    # projection heads of the KD terms: per_loss (each term its own head and scale) | shared (one head,
    # and one cross scale for icl / cross_kd / cid_instance, for all terms, as the CLIP-KD reference)
    heads: str = "per_loss"
    compile: str = "off"  # torch.compile: off | student | all (student and objective); falls back to eager


@dataclass
class EvalConfig:
    every: int = 0  # evaluate every N steps (0 = only at the end)
    # Dataset specs (see clipdistill.eval.datasets): synthetic, flickr:DIR[:SPLIT], coco:JSON:DIR, csv:FILE
    # (retrieval); synthetic, imagefolder:DIR (zero-shot, linear probe). "" disables the task.
    # auto: the synthetic sets when training on synthetic data, none for your own data (name a set to evaluate).
    retrieval: str = "auto"  # auto | dataset spec | "" (none)
    zero_shot: str = "auto"  # auto | dataset spec | "" (none)
    linear_probe: str = ""  # test set spec (e.g. imagefolder:cifar10/test); needs linear_probe_train
    linear_probe_train: str = ""  # train set spec (validation split carved from it)
    classnames: str = ""  # zero-shot class names: imagenet | cifar10 | FILE; "" = from the folder names
    templates: str = ""  # zero-shot prompts: imagenet | cifar10 | FILE; "" = the class set's own
    fidelity: bool = True  # teacher-student fidelity metrics (needs a live teacher)
    num_images: int = 500  # size of the synthetic held-out sets
    batch_size: int = 256


def _default_losses() -> dict:
    return {"clip": {"weight": 1.0}}


@dataclass
class Config:
    """A whole experiment. ``losses`` maps a loss name to its weight and keyword arguments,
    e.g. ``{"clip": {"weight": 1}, "crd": {"weight": 1, "temperature": 1.0}}``."""

    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    losses: dict = field(default_factory=_default_losses)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # Several teachers (an ensemble): a list of sections like ``teacher:``; instead of ``teacher:``, never with it.
    teachers: Union[list, None] = None


def teacher_sections(config: Config) -> list[TeacherConfig]:
    """The run's teachers: ``teachers:``, or ``teacher:`` as a list of one."""
    return list(config.teachers) if config.teachers is not None else [config.teacher]


# ----------------------------------------------------------------------------------------- parsing

def _type_name(tp) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is Any:
        return True
    return isinstance(value, origin or tp)


def _yaml_float(value):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float field takes it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        value = _yaml_float(value) if tp is float else value
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path + ".")
        elif not _matches(value, tp):
            raise ConfigError(f"config key '{path}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def _check_losses(losses: dict) -> None:
    for name, spec in losses.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"config key 'losses.{name}' expects a mapping like {{weight: 1.0}}, got {spec!r}")
        weight = spec.get("weight", 1.0)
        if not _matches(weight, float):
            raise ConfigError(f"config key 'losses.{name}.weight' expects float, got {weight!r}")


def _teacher_list(config: Config) -> list[TeacherConfig] | None:
    """``teachers:`` as TeacherConfigs, refused when empty or beside a ``teacher:`` section."""
    if config.teachers is None:
        return None
    if not config.teachers:
        raise ConfigError("config key 'teachers' is an empty list: name at least one teacher, or use 'teacher:'")
    if config.teacher != TeacherConfig():
        raise ConfigError("config has both 'teacher' and 'teachers': put every teacher in the 'teachers' list")
    teachers = [item if isinstance(item, TeacherConfig) else _build(TeacherConfig, item, f"teachers[{i}].")
                for i, item in enumerate(config.teachers)]
    unnamed = next((i for i, teacher in enumerate(teachers) if teacher.source == "none"), None)
    if unnamed is not None:
        raise ConfigError(f"teachers[{unnamed}].source is 'none': every teacher of an ensemble needs a source")
    return teachers


def _check_teacher_weights(config: Config) -> None:
    for i, teacher in enumerate(teacher_sections(config)):
        if teacher.weight <= 0 or (teacher.temperature is not None and teacher.temperature <= 0):
            where = f"teachers[{i}]" if config.teachers is not None else "teacher"
            raise ConfigError(f"config key '{where}': weight and temperature must be > 0, "
                              f"got {teacher.weight} and {teacher.temperature}")


def from_dict(data: dict) -> Config:
    """Validate a plain dict against the schema."""
    data = dict(data or {})
    if "teacher" in data and data["teacher"] is None:  # `teacher: null` drops a base file's teacher (for `teachers:`)
        del data["teacher"]
    config = _build(Config, data, "")
    # `losses.NAME=null` on the command line removes a term that the YAML file enabled.
    config.losses = {name: spec for name, spec in config.losses.items() if spec is not None}
    _check_losses(config.losses)
    config.teachers = _teacher_list(config)
    _check_teacher_weights(config)
    workers = config.data.workers
    if workers != "auto" and not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"config key 'data.workers' expects auto or a number >= 0, got {workers!r}")
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=5"`` -> (["train", "steps"], 5). Values are parsed as YAML scalars/flow collections."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = _yaml(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err.problem})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each dotted key in a nested dict (creating mappings as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a mapping")
            node = child
        node[path[-1]] = value
    return data


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment file (optional) and the files it builds on, apply overrides, validate."""
    data = _read_with_bases(Path(path), ()) if path is not None else {}
    return from_dict(apply_overrides(data, list(overrides)))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    """A YAML file's values over those of the file its ``base:`` names (a path relative to it), recursively.

    ``base: baseline.yaml`` lets an ablation state only what differs: mappings merge key by key
    (``losses:`` adds terms to the base's), anything else replaces the base's value.
    """
    if path.resolve() in chain:
        names = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"config files name each other as base in a cycle: {names}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base' expects the path of another YAML file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: its base file {base_path} was not found (a base path is relative to the file)")
    return deep_merge(_read_with_bases(base_path, (*chain, path.resolve())), data)


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings on both sides merge recursively, any other value replaces."""
    merged = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_mappings else value
    return merged


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
