"""Opening a teacher cache for a training run (``teacher.source: cache``), refusing one that does not fit.

Checked against the run: the format version; the teacher the config names, if it names one
(``teacher.model``/``teacher.pretrained``); the augmentation policy (``data.scale``, ``data.hflip``),
since the stored views stand in for the run's own. In ``hybrid`` mode the live teacher is loaded
from the identity the manifest records and must have the cached weights (fingerprint) and the
cached preprocessing (ImageSpec), or its embeddings of missing samples would not match the rest.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from clipdistill.cache.manifest import refuse_if_different, weights_fingerprint
from clipdistill.cache.reader import TeacherCache
from clipdistill.data.augmentation import Augmentation
from clipdistill.errors import UserError
from clipdistill.targets import BatchKeys, CachedTeacherTargets, LiveTeacherTargets

MODES = ("strict", "hybrid")
log = logging.getLogger("clipdistill.train")


def open_for_training(path: str, *, mode: str, model="", pretrained: str = "",
                      augmentation: Augmentation = Augmentation(), device: str = "cpu",
                      precision: str = "auto", keys: BatchKeys = BatchKeys()) -> CachedTeacherTargets:
    """The targets of a run that trains from the cache at ``path``, refused if the cache does not fit the run:
    its config says ``model``/``pretrained`` (may be empty), ``augmentation`` (``data.scale``, ``data.hflip``) and
    ``mode`` (``strict`` | ``hybrid``: samples missing from the cache are embedded by a live teacher).
    ``keys``: the batch keys of this teacher (one of an ensemble's, :meth:`BatchKeys.of_member`)."""
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
    live = LiveTeacherTargets(_live_teacher(cache, device, precision), torch.device(device), keys) \
        if mode == "hybrid" else None
    return CachedTeacherTargets(cache, torch.device(device), live=live, keys=keys)


def refuse_unshared_views(caches: list[tuple[int, TeacherCache]]) -> None:
    """An ensemble's caches must hold the same samples and the same stored views, or the student (which sees
    the replayed crop) would not see the crop every teacher saw: one line naming the first mismatch.

    ``caches``: (teacher index, cache) pairs. Compared: the keys, the data's description (its path aside),
    how the views were drawn (count, scale, ratio, flips, seed, sampler) and the stored view parameters
    themselves (20 bytes a view, read once).
    """
    (first, reference), others = caches[0], caches[1:]
    for index, cache in others:
        where = f"teachers[{index}] cache {cache.directory} and teachers[{first}] cache {reference.directory}"
        keys, reference_keys = cache.index.sorted_keys, reference.index.sorted_keys
        if len(keys) != len(reference_keys) or not np.array_equal(keys, reference_keys):
            raise UserError(f"{where} hold different samples (first differing key: "
                            f"'{_first_difference(keys, reference_keys)}'): build every cache over the same data")
        for section in ("dataset", "augmentation"):
            field = _first_different_field(cache.manifest[section], reference.manifest[section])
            if field is not None:
                raise UserError(f"{where} were built differently ({section}.{field}: "
                                f"{cache.manifest[section].get(field)!r} vs {reference.manifest[section].get(field)!r}): "
                                f"build every cache from the same data with the same cache.views and cache.seed")
        rows, reference_rows = (torch.from_numpy(np.array(c.index.sorted_rows)) for c in (cache, reference))
        differs = (cache.view[rows] != reference.view[reference_rows]).flatten(1).any(dim=1)
        if differs.any():
            raise UserError(f"{where} stored different views of sample '{keys[int(differs.nonzero()[0])]}': "
                            f"build them with the same cache.views, cache.seed and data settings")


def _first_different_field(found: dict, reference: dict) -> str | None:
    # The data's path may differ (a copy of the same files); what it holds is compared through keys and views.
    return next((k for k in sorted({*found, *reference}) if k != "path" and found.get(k) != reference.get(k)), None)


def _first_difference(keys: np.ndarray, reference: np.ndarray) -> str:
    """The first key (in sorted order) that one side has and the other lacks."""
    only = np.setxor1d(keys, reference)
    return str(only[0]) if only.size else ""


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
