"""What the training loader yields, and how one batch is put together from samples.

Every sample's augmentation draws from a generator seeded by what the sample is (``seed``, epoch,
sample id), never from the global RNG: exact resume and cache replay rely on it.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info


class Batch(TypedDict, total=False):
    """One training batch (a dict: DataLoader workers pickle it; these are its keys).

    Always present:
        student_image: ``(B, 3, H, W)`` the batch's crops rendered in the student's ImageSpec.
        student_text: ``(B, L)`` the captions tokenized for the student (absent for caption-free data,
            whose ``caption`` entries are None).
        view: ``(B, 5)`` int32, each crop as (top, left, height, width, flip) in the source image.
        caption: the B captions (strings).
        key: the B sample keys (strings: a dataset row, or a shard sample's ``__key__``).
        index: ``(B,)`` dataset rows of map-style data; -1 for streamed shards.
        bad: kind -> number of samples skipped (unreadable) while this batch was filled.
        epoch: the epoch of the batch's last sample.
    Present when the teacher asked for them (see :mod:`clipdistill.targets`):
        teacher_image: ``(B, 3, H', W')`` the same crops in the teacher's ImageSpec (the very tensor
            of ``student_image`` when both specs agree).
        teacher_text: ``(B, L')`` the captions in the teacher's tokenizer (``student_text`` itself when
            the tokenizers agree).
        view_index: ``(B,)`` which stored view of a teacher cache each crop replays (-1: none stored).
        teacher_stored: the cache rows gathered in the DataLoader worker (:class:`~clipdistill.targets.StoredRows`).
    Only between the workers and :class:`~clipdistill.data.loader.TrainBatches`:
        fatal: one line saying why the data cannot be read; raised in the training process.
        position: a shard reader's stream position after this batch (exact resume on shards).
    """

    student_image: torch.Tensor
    student_text: torch.Tensor
    view: torch.Tensor
    caption: list[str]
    key: list[str]
    index: torch.Tensor
    bad: dict[str, int]
    epoch: int
    teacher_image: torch.Tensor
    teacher_text: torch.Tensor
    view_index: torch.Tensor
    teacher_stored: dict[str, Any]
    fatal: str
    position: dict[str, Any]


def mix(*numbers: int) -> int:
    """One well-mixed 63-bit seed from several integers (so (seed, epoch) and (seed+1, epoch-1) differ)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, np.uint64)[0] >> 1)


def sample_generator(seed: int, epoch: int, sample_id: int) -> torch.Generator:
    """The generator a sample's augmentation draws from: a pure function of what the sample is."""
    return torch.Generator().manual_seed(mix(seed, epoch, sample_id))


class ViewReplay:
    """A PairedTransform that renders a sample's stored view (looked up by key) instead of sampling one."""

    def __init__(self, transform, views):
        self.transform, self.views = transform, views

    def __call__(self, image, generator: torch.Generator, key: str) -> dict:
        return self.transform.replay(image, self.views.get(key), generator)


def prepare(sample: dict, transform, *, seed: int, epoch: int, sample_id: int, index: int) -> dict:
    """One sample's crops (one tensor per ImageSpec) and bookkeeping, ready for :func:`collate`."""
    generator = sample_generator(seed, epoch, sample_id)
    if isinstance(transform, ViewReplay):
        views = transform(sample["image"], generator, key=sample["key"])
    else:
        views = transform(sample["image"], generator)
    return {"views": views, "caption": sample["caption"], "key": sample["key"], "index": index, "epoch": epoch}


def collate(prepared: list[dict], tokenizers: dict[str, Callable], bad: Counter,
            batch_extras: Callable[[dict], dict] | None = None) -> Batch:
    """Stack views, tokenize captions (this runs inside DataLoader workers), attach bookkeeping.

    Names that share a tensor (teacher and student with one ImageSpec) or a tokenizer (the teacher
    gets the student's when they agree) share one stacked tensor: stacked, tokenized and sent to the
    training process once.
    """
    batch, stacked = {}, {}
    for name, first in prepared[0]["views"].items():
        if id(first) not in stacked:
            stacked[id(first)] = torch.stack([p["views"][name] for p in prepared])
        batch[name] = stacked[id(first)]
    captions = [p["caption"] for p in prepared]
    tokenized = {}
    # Caption-free data (an image folder, shards without .txt) has no text for any model: no token keys.
    for name, tokenize in tokenizers.items() if None not in captions else ():
        if id(tokenize) not in tokenized:
            tokenized[id(tokenize)] = tokenize(captions)
        batch[name] = tokenized[id(tokenize)]
    batch.update(caption=captions, key=[p["key"] for p in prepared],
                 index=torch.tensor([p["index"] for p in prepared], dtype=torch.long),
                 bad=dict(bad), epoch=prepared[-1]["epoch"])
    if batch_extras is not None:
        batch.update(batch_extras(batch))
    return small_tensors_as_arrays(batch) if get_worker_info() is not None else batch


# A DataLoader worker hands each tensor of a batch over through its own shared-memory segment, whose file
# descriptor the training process then fetches from the worker in a round trip: 0.3 to 1 ms a tensor, the
# more the busier the worker (measured: 4 small tensors cost the training process ~3 ms a batch, as numpy
# arrays ~0.1 ms). A small tensor costs far less copied inside the batch's pickle, so workers send
# the tensors below this size as numpy arrays and TrainBatches turns them back into tensors.
PICKLED_BELOW = 1 << 18  # bytes


def small_tensors_as_arrays(value, _seen: dict | None = None):
    """``value`` (a batch, or a dict in it) with its tensors under PICKLED_BELOW bytes as numpy arrays (the same
    array for the same tensor, as when teacher and student share tokens). bfloat16 stays a tensor: numpy has none."""
    seen = {} if _seen is None else _seen
    if isinstance(value, dict):
        return {k: small_tensors_as_arrays(v, seen) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.dtype != torch.bfloat16 \
            and value.numel() * value.element_size() < PICKLED_BELOW:
        return seen.setdefault(id(value), value.numpy())
    return value


def arrays_as_tensors(value, _seen: dict | None = None):
    """The inverse of :func:`small_tensors_as_arrays` in the training process (no copy: ``torch.from_numpy``)."""
    seen = {} if _seen is None else _seen
    if isinstance(value, dict):
        return {k: arrays_as_tensors(v, seen) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return seen.setdefault(id(value), torch.from_numpy(value))
    return value


def data_loader(dataset, *, workers: int, seed: int, **kwargs) -> DataLoader:
    """The DataLoader that carries batches from the workers (``workers`` 0: in this process)."""
    # An explicit generator: DataLoader would otherwise draw worker seeds from the global RNG and
    # shift the training RNG stream (dropout...) between a continuous and a resumed run.
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=hand_over_promptly, **kwargs)


# The training process fetches each shared-memory tensor's file descriptor from a thread of the worker that
# made it, in several round trips, each of which waits for that worker's GIL; a busy worker (decoding,
# cropping) lets another thread have the GIL only every 5 ms by default. Measured (one 3 MB tensor, a worker
# busy in Python): 21 ms to receive at the default interval, 2 ms at this one.
WORKER_SWITCH_INTERVAL = 1e-4  # seconds


def hand_over_promptly(_worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: let the worker's fd-sharing thread answer within WORKER_SWITCH_INTERVAL."""
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)


def as_is(batch: dict) -> dict:
    """A DataLoader ``collate_fn`` for items that are collated already (module-level: workers pickle it)."""
    return batch
