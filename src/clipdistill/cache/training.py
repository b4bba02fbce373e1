"""Opening a teacher cache for a training run (``teacher.source: cache``), refusing one that does not fit.

Checked against the run: the format version; the teacher the config names, if it names one
(``teacher.model``/``teacher.pretrained``); the augmentation policy (``data.scale``, ``data.hflip``),
since the stored views stand in for the run's own. In ``hybrid`` mode the live teacher is loaded
from the identity the manifest records and must have the cached weights (fingerprint) and the
cached preprocessing (ImageSpec), or its embeddings of missing samples would not match the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from clipdistill.cache.manifest import refuse_if_different, weights_fingerprint
from clipdistill.cache.reader import TeacherCache
from clipdistill.errors import UserError
from clipdistill.targets import CachedTeacherTargets, LiveTeacherTargets

MODES = ("strict", "hybrid")


@dataclass
class CacheSource:
    """An opened cache and, in hybrid mode, the live teacher that fills its gaps."""

    cache: TeacherCache
    teacher: object | None  # clipdistill.models.Teacher in hybrid mode

    @property
    def dim(self) -> int:
        return self.cache.dim

    def targets(self, device: torch.device) -> CachedTeacherTargets:
        live = LiveTeacherTargets(self.teacher, device) if self.teacher is not None else None
        return CachedTeacherTargets(self.cache, device, live=live)


def open_for_training(path: str, *, mode: str, model="", pretrained: str = "", scale=(0.9, 1.0),
                      hflip: bool = False, device: str = "cpu", precision: str = "auto") -> CacheSource:
    """Open the cache at ``path`` for a run whose config says ``model``/``pretrained`` (may be empty),
    ``scale``/``hflip`` (data augmentation) and ``mode`` (``strict`` | ``hybrid``)."""
    if mode not in MODES:
        raise UserError(f"unknown teacher.cache_mode '{mode}' (choose from {', '.join(MODES)})")
    if not path:
        raise UserError("teacher.source=cache needs teacher.path (a directory written by clipdistill cache)")
    cache = TeacherCache(path)
    expected_teacher = {"model": model, "pretrained": pretrained} if model else {}
    refuse_if_different(cache.manifest, {"teacher": expected_teacher,
                                         "augmentation": {"scale": list(scale), "hflip": hflip}},
                        path, "this run's teacher and data.scale/data.hflip")
    teacher = _live_teacher(cache, device, precision) if mode == "hybrid" else None
    return CacheSource(cache, teacher)


def _live_teacher(cache: TeacherCache, device: str, precision: str):
    from clipdistill.models import load_teacher

    identity = cache.manifest["teacher"]
    # The live teacher computes as the cached one did (bf16 or fp32), whatever this run's teacher.precision.
    precision = cache.manifest.get("teacher_precision", precision)
    teacher = load_teacher(identity["source"], model=identity["model"], pretrained=identity["pretrained"],
                           path=identity["path"], device=device, precision=precision,
                           preprocess=identity.get("preprocess"))
    refuse_if_different(cache.manifest, {"weights_fingerprint": weights_fingerprint(teacher),
                                         "image_spec": teacher.image_spec.as_dict()},
                        cache.directory, "the live teacher of hybrid mode (weights or preprocessing changed)")
    return teacher
