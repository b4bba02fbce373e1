"""``manifest.json``: what a teacher cache holds and how it was made, so a run can refuse a wrong one.

Fields (format version 2)::

    format, format_version   "clipdistill-teacher-cache", 2 (version 1, without ``image_row``, is still read)
    teacher                  Teacher.identity: source, model, pretrained, path, weights_sha256 (of a file)
    weights_fingerprint      SHA-256 over the teacher's tensors as loaded (identifies random and tag weights too)
    teacher_precision        bf16 | fp32: how the teacher computed (Teacher.compute_precision)
    image_spec               the teacher's preprocessing (ImageSpec.as_dict: size, mean, std, interpolation,
                             resize_mode; a manifest written before resize_mode existed reads as "shortest")
    augmentation             how the stored views were drawn: views, scale, ratio, hflip, seed, sampler
    dataset                  what was embedded (kind, path, num_samples, seed, keys)
    dtype, storage           fp16 | bf16 | fp32; safetensors | numpy
    dim, logit_scale         teacher embedding size, multiplicative logit scale exp(log_scale)
    logit_bias               the sigmoid teacher's additive logit bias (SigLIP), null for a softmax teacher
    context_length           the teacher's text context (tokens); null when its tokenizer does not say
    captions_per_sample      1, or 0 for caption-free data (an image folder, shards without text): no text rows
    shard_size, num_shards   the work split (the unit of resume and of rank assignment)
    tensors                  shapes of each shard's tensors
    count, images            filled in when the last shard is written: samples (rows) and stored image
    skipped, complete        entries (fewer when rows of a shard share an image), skipped samples; complete:
                             false until then
    truncated_captions       captions longer than the teacher's context (cut for the teacher); null when the
                             tokenizer cannot be counted (see clipdistill.models.guards.count_truncated)
    extras                   name -> description of per-sample extras (CID pseudo-labels, centroids), see extras.py

``settings`` are all fields but the last group: a resumed run must have the same settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from clipdistill.atomic import write_text_atomic
from clipdistill.errors import UserError

FORMAT = "clipdistill-teacher-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 stored one image entry per row (no ``image_row``)
MANIFEST = "manifest.json"
# Written once the cache is complete; everything else is fixed before the first shard.
RESULT_FIELDS = ("count", "images", "skipped", "complete", "extras", "truncated_captions")
# Which fields a view replay depends on: the sampler's algorithm is versioned with the code.
VIEW_SAMPLER = "clipdistill.data.transforms.sample_view/v1"
TENSORS = {"image": "(images, views, dim)", "text": "(n, dim)",
           "view": "(n, views, 5) int32 top,left,height,width,flip (a copy of the views of the row's image)",
           "index": "(n,) int64 dataset position (-1 for shards)",
           "image_row": "(n,) int64 entry of image holding the row's image (rows of one image share it)"}


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of ``module``'s state_dict (names, dtypes, shapes and bytes), in name order.

    Unlike a file hash it identifies weights that came from no file: an open_clip tag or a seeded
    random initialization, which is what lets a hybrid run prove its live teacher is the cached one.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def build_manifest(*, teacher, fingerprint: str, augmentation: dict, dataset: dict, dtype: str, storage: str,
                   shard_size: int, num_shards: int, has_captions: bool = True) -> dict:
    """The settings part of a manifest for ``teacher`` (a :class:`~clipdistill.models.Teacher`)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "teacher": dict(teacher.identity), "weights_fingerprint": fingerprint,
        "teacher_precision": teacher.compute_precision,
        "image_spec": teacher.image_spec.as_dict(),
        "augmentation": {**augmentation, "sampler": VIEW_SAMPLER},
        "dataset": dict(dataset), "dtype": dtype, "storage": storage,
        "dim": int(teacher.embed_dim), "logit_scale": float(teacher.logit_scale()),
        "logit_bias": _optional_float(teacher.logit_bias()),
        "context_length": getattr(teacher.tokenizer, "context_length", None),
        "captions_per_sample": int(has_captions), "shard_size": int(shard_size), "num_shards": int(num_shards),
        "tensors": TENSORS,
        "count": None, "images": None, "skipped": {}, "complete": False, "extras": {}, "truncated_captions": None,
    }


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def settings(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in RESULT_FIELDS}


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"not a teacher cache (no {MANIFEST}): {directory}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise UserError(f"{path}: cache format {manifest.get('format')!r} version {manifest.get('format_version')!r}"
                        f" is not {FORMAT!r} version {' or '.join(map(str, READABLE_VERSIONS))}; rebuild it with clipdistill cache")
    # Written before resize_mode was recorded, every teacher was rendered shortest-side-then-crop.
    if isinstance(manifest.get("image_spec"), dict):
        manifest["image_spec"].setdefault("resize_mode", "shortest")
    return manifest


def write_manifest(directory: str | Path, manifest: dict) -> None:
    # Ranks may write at once: each through a temporary file of its own, synced, then renamed.
    write_text_atomic(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n",
                      per_process=True)


def differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    """``"key: cache has A, run has B"`` for every key of ``expected`` whose value ``found`` does not share.

    JSON turns tuples into lists, so both sides are compared in their JSON form.
    """
    out = []
    for key, want in expected.items():
        have = found.get(key) if isinstance(found, dict) else None
        if isinstance(want, dict) and isinstance(have, dict):
            out += differences(have, want, f"{prefix}{key}.")
        elif json.loads(json.dumps(have)) != json.loads(json.dumps(want)):
            out.append(f"{prefix}{key}: cache has {have!r}, run has {want!r}")
    return out


def refuse_if_different(manifest: dict, expected: dict, directory: str | Path, what: str) -> None:
    """Raise a one-line UserError naming the first mismatching fields."""
    found = differences(manifest, expected)
    if found:
        more = f" (+{len(found) - 2} more)" if len(found) > 2 else ""
        raise UserError(f"teacher cache {directory} does not match {what}: {'; '.join(found[:2])}{more}")
