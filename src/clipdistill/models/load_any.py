"""Any CLIP to evaluate, from one string: a run checkpoint, an export, open_clip weights, a HF directory.

Specs:

- ``runs/x/checkpoints/step_00000300.pt``: a ``clipdistill train`` checkpoint (the student's weights,
  its architecture from the stored config, and the run's projection head for fidelity metrics);
  ``runs/x``, the run directory, means its newest checkpoint;
- ``DIR`` holding ``open_clip_config.json``: a ``clipdistill export`` (or any open_clip local-dir model);
- ``openclip:ARCH:TAG_OR_FILE``: an open_clip architecture with a pretrained tag or a weights file;
- ``hf:DIR``: a Hugging Face ``CLIPModel`` directory.

Everything but the run checkpoint loads as a frozen :class:`~clipdistill.models.Teacher` (the same
loaders as the teacher of a run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
from torch import nn

from clipdistill.errors import UserError
from clipdistill.models.checkpoints import is_run_checkpoint, load_untrusted, load_weights, newest_checkpoint_if_run
from clipdistill.models.student import build_student, image_spec_of
from clipdistill.models.teacher import Teacher, load_teacher


@dataclass
class LoadedModel:
    """An encoder (eval protocol) plus what reports and fidelity metrics need about it.

    Attributes:
        encoder: ``encode_image`` / ``encode_text`` / ``tokenizer`` / ``image_spec``.
        name, pretrained: the ``model`` and ``pretrained`` fields of CLIP_benchmark's result schema.
        objective_state: a run checkpoint's objective state (projection heads), else None.
    """

    encoder: object
    name: str
    pretrained: str
    objective_state: dict | None = None


def load_run_checkpoint(path: str | Path) -> dict:
    """A ``clipdistill train`` checkpoint dict (``student``, ``config``, ``objective``, ...) from its file or
    its run directory (the newest checkpoint); never runs code."""
    path = newest_checkpoint_if_run(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    state = load_untrusted(path)
    if not is_run_checkpoint(state):
        raise UserError(f"{path} is not a clipdistill run checkpoint (no 'student'/'config'); for a plain "
                        f"weights file use openclip:ARCH:{path}")
    return state


def student_architecture(state: dict):
    """The student architecture stored in a run checkpoint's config (preset, open_clip name or dict)."""
    return state["config"]["student"]["model"]


def _from_run_checkpoint(path: str, device: str) -> LoadedModel:
    state = load_run_checkpoint(path)
    architecture = student_architecture(state)
    student = build_student(architecture)
    load_weights(student.model, state["student"], path)
    student.model.to(device).eval()
    name = architecture if isinstance(architecture, str) else student.name
    return LoadedModel(student, name=name, pretrained=path, objective_state=state.get("objective"))


def _from_local_dir(path: str, device: str) -> LoadedModel:
    spec = f"local-dir:{path}"
    model = open_clip.create_model(spec).to(device).eval()
    embed_dim = open_clip.get_model_config(spec)["embed_dim"]
    teacher = Teacher(model, tokenizer=open_clip.get_tokenizer(spec), image_spec=image_spec_of(model),
                      embed_dim=embed_dim, identity={"source": "local-dir", "path": os.path.abspath(path)})
    return LoadedModel(teacher, name=Path(path).name, pretrained=path)


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    """Load any supported model spec (see the module doc) for evaluation on ``device``."""
    if spec.startswith("openclip:"):
        _, arch, weights = (spec.split(":", 2) + [""])[:3]
        if not arch:
            raise UserError(f"'{spec}': expected openclip:ARCH:TAG_OR_FILE")
        teacher = load_teacher("openclip", model=arch, pretrained=weights, device=device)
        return LoadedModel(teacher, name=arch, pretrained=weights)
    if spec.startswith("hf:"):
        return LoadedModel(load_teacher("hf", path=spec[3:], device=device), name="hf", pretrained=spec[3:])
    if os.path.isdir(spec):
        if os.path.isdir(os.path.join(spec, "checkpoints")):  # a run directory: its newest checkpoint
            return _from_run_checkpoint(spec, device)
        if not os.path.isfile(os.path.join(spec, "open_clip_config.json")):
            raise UserError(f"{spec} has no open_clip_config.json (an export) nor checkpoints/ (a run directory); "
                            f"for a Hugging Face directory use hf:{spec}")
        return _from_local_dir(spec, device)
    if os.path.isfile(spec):
        return _from_run_checkpoint(spec, device)
    raise UserError(f"model '{spec}' is not a run checkpoint, an export directory, openclip:ARCH:TAG or hf:DIR")


def raw_model(loaded: LoadedModel) -> nn.Module | None:
    """The open_clip module of a run checkpoint's student (raw embeddings for projection heads)."""
    return getattr(loaded.encoder, "model", None) if loaded.objective_state is not None else None
