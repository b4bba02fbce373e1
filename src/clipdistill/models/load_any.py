"""Any CLIP to evaluate, from one string: a run checkpoint, an export, open_clip weights, a HF directory.

Specs:

- ``runs/x/checkpoints/step_00000300.pt``: a ``clipdistill train`` checkpoint (the student's weights,
  its architecture from the stored config, and the run's projection head for fidelity metrics);
  ``runs/x``, the run directory, means its newest checkpoint;
- ``DIR`` holding ``open_clip_config.json``, or ``local-dir:DIR``: a ``clipdistill export`` or any open_clip
  model folder (config, weights, tokenizer files); ``hf-hub:org/name``: the same on the Hugging Face Hub;
- ``openclip:ARCH:TAG_OR_FILE``: an open_clip architecture with a pretrained tag or a weights file;
  ``openclip:ARCH@TAG:FILE``: a weights file that is pretrained tag TAG (its preprocessing and activation);
- ``hf:DIR``: a Hugging Face CLIP / SigLIP / SigLIP 2 / MetaCLIP 2 directory.

Everything but the run checkpoint loads as a frozen :class:`~clipdistill.models.Teacher` (the same
loaders as the teacher of a run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from clipdistill.errors import UserError
from clipdistill.models.checkpoints import is_run_checkpoint, load_untrusted, newest_checkpoint_if_run
from clipdistill.models.student import trained_student
from clipdistill.models.teacher import load_teacher


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
    student = trained_student(state, path)
    student.model.to(device).eval()
    name = architecture if isinstance(architecture, str) else student.name
    return LoadedModel(student, name=name, pretrained=path, objective_state=state.get("objective"))


def _from_folder(name: str, device: str) -> LoadedModel:
    """``local-dir:DIR`` / ``hf-hub:org/name``: the same loader as a teacher of a run."""
    teacher = load_teacher("openclip", model=name, device=device)
    location = name.split(":", 1)[1]
    return LoadedModel(teacher, name=Path(location).name, pretrained=location)


def _from_openclip_spec(spec: str, device: str) -> LoadedModel:
    _, arch, weights = (spec.split(":", 2) + [""])[:3]
    arch, _, tag = arch.partition("@")
    if not arch:
        raise UserError(f"'{spec}': expected openclip:ARCH:TAG_OR_FILE or openclip:ARCH@TAG:FILE")
    if tag:  # a weights file that is a known tag: weights from the file, identity from the tag
        if not weights:
            raise UserError(f"'{spec}': openclip:ARCH@TAG needs the weights file after it (openclip:{arch}@{tag}:FILE)")
        teacher = load_teacher("checkpoint", model=arch, path=weights, pretrained=tag, device=device)
    else:
        teacher = load_teacher("openclip", model=arch, pretrained=weights, device=device)
    return LoadedModel(teacher, name=arch, pretrained=tag or weights)


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    """Load any supported model spec (see the module doc) for evaluation on ``device``."""
    if spec.startswith("openclip:"):
        return _from_openclip_spec(spec, device)
    if spec.startswith("hf:"):
        return LoadedModel(load_teacher("hf", path=spec[3:], device=device), name="hf", pretrained=spec[3:])
    if spec.startswith(("local-dir:", "hf-hub:")):
        return _from_folder(spec, device)
    if os.path.isdir(spec):
        if os.path.isdir(os.path.join(spec, "checkpoints")):  # a run directory: its newest checkpoint
            return _from_run_checkpoint(spec, device)
        if not os.path.isfile(os.path.join(spec, "open_clip_config.json")):
            raise UserError(f"{spec} has no open_clip_config.json (an export) nor checkpoints/ (a run directory); "
                            f"for a Hugging Face directory use hf:{spec}")
        return _from_folder(f"local-dir:{spec}", device)
    if os.path.isfile(spec):
        return _from_run_checkpoint(spec, device)
    raise UserError(f"model '{spec}' is not a run checkpoint, an export directory, local-dir:DIR, hf-hub:ORG/NAME, "
                    f"openclip:ARCH:TAG_OR_FILE, openclip:ARCH@TAG:FILE or hf:DIR")


def raw_model(loaded: LoadedModel) -> nn.Module | None:
    """The open_clip module of a run checkpoint's student (raw embeddings for projection heads)."""
    return getattr(loaded.encoder, "model", None) if loaded.objective_state is not None else None
