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
from clipdistill.models import Student, Teacher, build_student, load_teacher
from clipdistill.targets import LiveTeacherTargets

TEACHER_SOURCES = ("none", "openclip", "checkpoint", "hf", "cache")


def augmentation_from(data: config_lib.DataConfig) -> Augmentation:
    return Augmentation(scale=tuple(data.scale), hflip=data.hflip)


def dataset_from(data: config_lib.DataConfig):
    """The dataset ``data`` describes (a map-style dataset or a stream of shards)."""
    return build_dataset(data.kind, path=data.path, num_samples=data.num_samples, seed=data.seed,
                         image_key=data.image_key, caption_key=data.caption_key, separator=data.separator)


def student_from(student: config_lib.StudentConfig, patch_dropout: float | None = None) -> Student:
    return build_student(student.model, student.pretrained, patch_dropout=patch_dropout, preprocess=student.preprocess)


def teacher_from(teacher: config_lib.TeacherConfig, device: torch.device | str) -> Teacher:
    """The live, frozen teacher ``teacher`` names (source openclip, checkpoint or hf)."""
    if teacher.source in ("none", "cache"):
        raise UserError(f"teacher.source '{teacher.source}' names no model to run: set teacher.source to "
                        f"openclip, checkpoint or hf")
    return load_teacher(teacher.source, model=teacher.model, pretrained=teacher.pretrained, path=teacher.path,
                        device=str(device), precision=teacher.precision, preprocess=teacher.preprocess)


def targets_from(teacher: config_lib.TeacherConfig, augmentation: Augmentation, device: torch.device):
    """Where this run's teacher embeddings come from: a live teacher, or a cache (strict or hybrid)."""
    if teacher.source not in TEACHER_SOURCES:
        raise UserError(f"unknown teacher.source '{teacher.source}' (choose from {', '.join(TEACHER_SOURCES)})")
    if teacher.source == "none":
        return None
    if teacher.source == "cache":
        from clipdistill.cache.training import open_for_training

        return open_for_training(teacher.path, mode=teacher.cache_mode, model=teacher.model,
                                 pretrained=teacher.pretrained, augmentation=augmentation, device=str(device),
                                 precision=teacher.precision)
    return LiveTeacherTargets(teacher_from(teacher, device), device)


def objective_from(losses: dict, student: Student, targets, local_loss: bool, heads: str = "per_loss") -> Objective:
    return build_objective(losses, student_dim=student.embed_dim,
                           teacher_dim=targets.dim if targets is not None else None, local_loss=local_loss,
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
