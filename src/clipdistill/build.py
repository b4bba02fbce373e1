"""From a config's sections to the components they describe.

This is where a config section becomes keyword arguments, once for every command: ``clipdistill
train``, ``cache`` and ``eval`` build their students, teachers, datasets and targets here. Nothing
below this module ever sees a config object.
"""
from __future__ import annotations

import torch

from clipdistill import config as config_lib
from clipdistill.data import build_dataset
from clipdistill.data.augmentation import Augmentation
from clipdistill.errors import UserError
from clipdistill.losses.objective import Objective, build_objective
from clipdistill.losses.registry import names as loss_names
from clipdistill.losses.registry import resolve as resolve_loss
from clipdistill.models import Student, Teacher, build_student, load_teacher
from clipdistill.models.towers import reused_tower, student_with_teacher_tower
from clipdistill.targets import BatchKeys, EnsembleTargets, LiveTeacherTargets

TEACHER_SOURCES = ("none", "openclip", "checkpoint", "hf", "cache")


def augmentation_from(data: config_lib.DataConfig) -> Augmentation:
    return Augmentation(scale=tuple(data.scale), hflip=data.hflip)


def dataset_from(data: config_lib.DataConfig):
    """The dataset ``data`` describes (a map-style dataset or a stream of shards)."""
    return build_dataset(data.kind, path=data.path, num_samples=data.num_samples, seed=data.seed,
                         image_key=data.image_key, caption_key=data.caption_key, separator=data.separator)


def student_from(student: config_lib.StudentConfig, patch_dropout: float | None = None,
                 teacher: Teacher | None = None) -> Student:
    """The student; with ``student.text_tower``/``image_tower: teacher``, rebuilt around ``teacher``'s tower."""
    reused = reused_tower(student.text_tower, student.image_tower)
    built = build_student(student.model, student.pretrained, patch_dropout=patch_dropout, preprocess=student.preprocess)
    if reused is None:
        return built
    if teacher is None:
        raise UserError(f"student.{reused}_tower=teacher needs a teacher: set teacher.source (openclip, checkpoint "
                        f"or cache)")
    return student_with_teacher_tower(built, teacher, reused)


def tower_teacher(student: config_lib.StudentConfig, teacher: config_lib.TeacherConfig, targets,
                  device: torch.device | str) -> Teacher | None:
    """The teacher whose tower the student reuses (None when it reuses none): the run's live teacher, or the
    one a cache's manifest names (checked against the cached weights), or the one ``teacher`` names."""
    reused = reused_tower(student.text_tower, student.image_tower)
    if reused is None:
        return None
    live = getattr(targets, "teacher", None)
    if live is not None:
        return live
    if teacher.source == "none":
        raise UserError(f"student.{reused}_tower=teacher needs a teacher: set teacher.source (openclip, checkpoint "
                        f"or cache)")
    if teacher.source == "cache":
        from clipdistill.cache.training import teacher_of_cache

        return teacher_of_cache(teacher.path, device=str(device), precision=teacher.precision)
    return teacher_from(teacher, device)


def check_captions(dataset, losses: dict, student: config_lib.StudentConfig,
                   teacher: config_lib.TeacherConfig | None = None) -> None:
    """Caption-free data (an image folder, shards without .txt) trains the image tower on image terms only,
    against the teacher's text tower: anything else is refused here, before the first step."""
    if getattr(dataset, "has_captions", True):
        return
    if teacher is not None and teacher.source == "cache" and teacher.cache_mode == "hybrid":
        raise UserError(f"{dataset!r} has no captions: teacher.cache_mode=hybrid is not supported for caption-free "
                        f"data; cache the whole dataset and train with teacher.cache_mode=strict")
    if student.text_tower != "teacher":
        raise UserError(f"{dataset!r} has no captions: set student.text_tower=teacher (the teacher's frozen text "
                        f"tower gives the student text embeddings in its space; the image tower is distilled)")
    image_only = [name for name in loss_names() if not getattr(resolve_loss(name), "needs_text", True)]
    for name in losses:
        if getattr(resolve_loss(name), "needs_text", True):
            raise UserError(f"loss '{name}' needs captions, but {dataset!r} has none: use image-only losses "
                            f"({', '.join(image_only)}) for caption-free data")


def teacher_from(teacher: config_lib.TeacherConfig, device: torch.device | str) -> Teacher:
    """The live, frozen teacher ``teacher`` names (source openclip, checkpoint or hf)."""
    if teacher.source in ("none", "cache"):
        raise UserError(f"teacher.source '{teacher.source}' names no model to run: set teacher.source to "
                        f"openclip, checkpoint or hf")
    return load_teacher(teacher.source, model=teacher.model, pretrained=teacher.pretrained, path=teacher.path,
                        device=str(device), precision=teacher.precision, preprocess=teacher.preprocess)


def targets_from(teachers: list[config_lib.TeacherConfig] | config_lib.TeacherConfig, augmentation: Augmentation,
                 device: torch.device) -> EnsembleTargets | None:
    """Where this run's teacher embeddings come from: each teacher live or from a cache (strict or hybrid),
    all behind one :class:`~clipdistill.targets.EnsembleTargets` (one teacher: an ensemble of one).
    ``teachers``: :func:`clipdistill.config.teacher_sections` of the run's config (or one section)."""
    teachers = teachers if isinstance(teachers, list) else [teachers]
    named = [teacher.source != "none" for teacher in teachers]
    if not any(named):
        return None
    if not all(named):
        raise UserError(f"teachers[{named.index(False)}].source is 'none': every teacher of an ensemble needs a source")
    members = [_single_targets(teacher, augmentation, device, BatchKeys.of_member(k)) for k, teacher in enumerate(teachers)]
    return EnsembleTargets(members, weights=[t.weight for t in teachers], temperatures=[t.temperature for t in teachers])


def _single_targets(teacher: config_lib.TeacherConfig, augmentation: Augmentation, device: torch.device,
                    keys: BatchKeys):
    if teacher.source not in TEACHER_SOURCES:
        raise UserError(f"unknown teacher.source '{teacher.source}' (choose from {', '.join(TEACHER_SOURCES)})")
    if teacher.source == "cache":
        from clipdistill.cache.training import open_for_training

        return open_for_training(teacher.path, mode=teacher.cache_mode, model=teacher.model,
                                 pretrained=teacher.pretrained, augmentation=augmentation, device=str(device),
                                 precision=teacher.precision, keys=keys)
    return LiveTeacherTargets(teacher_from(teacher, device), device, keys)


def objective_from(losses: dict, student: Student, targets, local_loss: bool, heads: str = "per_loss") -> Objective:
    return build_objective(losses, student_dim=student.embed_dim,
                           teacher_dim=targets.dims if targets is not None else None, local_loss=local_loss,
                           heads=heads)


def local_loss_from(train: config_lib.TrainConfig, world_size: int) -> bool:
    """``train.local_loss``: each rank computes its own rows against the global batch (memory linear in
    the global batch); ``auto`` turns it on wherever there is more than one rank."""
    value = train.local_loss
    if value == "auto":
        return world_size > 1
    if isinstance(value, bool):
        return value
    raise UserError(f"train.local_loss must be true, false or auto, got {value!r}")
