"""Opening a teacher cache for a training run (``teacher.source: cache``), refusing one that does not fit.

Checked against the run: the format version; the teacher the config names, if it names one
(``teacher.model``/``teacher.pretrained``); the augmentation policy (``data.scale``, ``data.hflip``),
since the stored views stand in for the run's own. In ``hybrid`` mode the live teacher is loaded
from the identity the manifest records and must have the cached weights (fingerprint) and the
cached preprocessing (ImageSpec), or its embeddings of missing samples would not match the rest.
"""
from __future__ import annotations

import logging

import torch

from clipdistill.cache.manifest import refuse_if_different, weights_fingerprint
from clipdistill.cache.reader import TeacherCache
from clipdistill.data.augmentation import Augmentation
from clipdistill.errors import UserError
from clipdistill.targets import CachedTeacherTargets, LiveTeacherTargets

MODES = ("strict", "hybrid")
log = logging.getLogger("clipdistill.train")


def open_for_training(path: str, *, mode: str, model="", pretrained: str = "",
                      augmentation: Augmentation = Augmentation(), device: str = "cpu",
                      precision: str = "auto") -> CachedTeacherTargets:
    """The targets of a run that trains from the cache at ``path``, refused if the cache does not fit the run:
    its config says ``model``/``pretrained`` (may be empty), ``augmentation`` (``data.scale``, ``data.hflip``) and
    ``mode`` (``strict`` | ``hybrid``: samples missing from the cache are embedded by a live teacher)."""
    if mode not in MODES:
        raise UserError(f"unknown teacher.cache_mode '{mode}' (choose from {', '.join(MODES)})")
    if not path:
        raise UserError("teacher.source=cache needs teacher.path (a directory written by clipdistill cache)")
    cache = TeacherCache(path)
    expected_teacher = {"model": model, "pretrained": pretrained} if model else {}
    refuse_if_different(cache.manifest, {"teacher": expected_teacher,
                                         "augmentation": augmentation.as_dict()},
                        path, "this run's teacher and data.scale/data.hflip")
    truncated = cache.manifest.get("truncated_captions")
    if truncated:
        log.warning("%d of the cache's %d captions were longer than the teacher's context (%s tokens) and were "
                    "embedded truncated", truncated, cache.manifest.get("count", 0), cache.manifest.get("context_length"))
    live = LiveTeacherTargets(_live_teacher(cache, device, precision), torch.device(device)) \
        if mode == "hybrid" else None
    return CachedTeacherTargets(cache, torch.device(device), live=live)


def teacher_of_cache(path: str, *, device: str = "cpu", precision: str = "auto"):
    """The teacher the cache at ``path`` was written by, loaded as its manifest records it and refused unless
    its weights and preprocessing are the cached ones (a student reusing its tower needs that very model)."""
    return _live_teacher(TeacherCache(path), device, precision)


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
