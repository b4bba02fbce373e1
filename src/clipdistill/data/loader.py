"""The training loader: the one thing the training loop asks for data.

    dataset = build_dataset("csv", path="pairs.tsv")
    batches = train_batches(dataset, transform=..., tokenizers=..., batch_size=256, seed=0)
    batch = next(batches)   # forever: epochs chain

Map-style datasets (synthetic, CSV) follow a plan that is a pure function of ``(seed, step)``: each
epoch is a permutation from ``(seed, epoch)``, split into equal per-rank shares, cut into fixed-size
batches. Resuming at step ``k`` therefore replays exactly, without reading a single skipped image,
and the result does not depend on the number of DataLoader workers. Augmentation draws come from a
generator seeded by ``(seed, epoch, sample index)`` for the same reason.

Shards (WebDataset) are streamed; see :func:`_shard_loader` for what resume means there.
"""
from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from clipdistill.data.bad_samples import BadSample
from clipdistill.data.csv_pairs import CsvPairs
from clipdistill.data.shards import KeptKeys, ShardPairs
from clipdistill.data.synthetic import SyntheticPairs
from clipdistill.errors import UserError

KINDS = ("synthetic", "csv", "webdataset")

log = logging.getLogger(__name__)
# Each reader (process) names this many skipped samples in the log; the rest are only counted.
_MAX_BAD_WARNINGS = 20
_bad_warnings = 0

# A slot tries its planned sample and then up to this many replacements before giving up.
_MAX_CANDIDATES = 32
# A shard reader that meets this many unusable samples in a row stops: the data is not what it should be.
_MAX_CONSECUTIVE_BAD = 1000
# Backstop against a wrong path: more than half of the first this-many attempted samples unreadable.
_BACKSTOP_WINDOW = 1000


def build_dataset(kind: str, *, path: str = "", num_samples: int = 0, seed: int = 0, image_key: str = "filepath",
                  caption_key: str = "title", separator: str = "auto"):
    """The dataset of ``kind``: ``"synthetic"`` (num_samples, seed), ``"csv"`` (path, keys, separator) or
    ``"webdataset"`` (path: shard pattern or folder)."""
    if kind == "synthetic":
        if num_samples <= 0:
            raise UserError(f"the synthetic dataset needs a positive number of samples, got {num_samples}")
        return SyntheticPairs(num_samples, seed=seed)
    if kind == "csv":
        if not path:
            raise UserError("the csv dataset needs a path to a CSV/TSV file of image paths and captions")
        return CsvPairs(path, image_key=image_key, caption_key=caption_key, separator=separator)
    if kind == "webdataset":
        return ShardPairs(path)
    raise UserError(f"unknown dataset kind '{kind}' (available: {', '.join(KINDS)})")


def train_batches(dataset, *, transform, tokenizers: dict[str, Callable], batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1, workers: int = 0, start_step: int = 0, keep=None,
                  subset: int | None = None, views=None, batch_extras: Callable[[dict], dict] | None = None
                  ) -> Iterator[dict]:
    """Endless training batches for this rank, starting at global step ``start_step``.

    Each batch: one tensor per image spec of ``transform`` (``student_image``, ``teacher_image``;
    ``(B, 3, H, W)``), ``view`` ``(B, 5)`` int32, one ``(B, L)`` token tensor per entry of ``tokenizers``,
    ``caption`` and ``key`` (lists), ``index`` ``(B,)`` (-1 for shards), ``bad`` (kind -> samples skipped
    while producing this batch) and ``epoch``.

    ``keep`` (``clipdistill curate``'s ``keep.npy``, or the array itself) restricts the data: for a
    map-style dataset it lists dataset rows (those below ``subset`` count when both are given); for
    WebDataset shards, sample keys (a ``.npy`` path; see :class:`~clipdistill.data.shards.KeptKeys`).

    ``views`` (a teacher cache's ``CachedViews``: key -> stored views or None) makes every sample replay
    one of its stored views, chosen from ``(seed, epoch, sample)``, instead of sampling a new one; the
    batch then also has ``view_index`` ``(B,)`` (which stored view; -1 where the key had none).

    ``batch_extras`` (batch -> dict of more entries) runs on each collated batch where it is collated,
    in the DataLoader workers: e.g. :class:`clipdistill.targets.StoredRows` gathers a teacher cache's rows
    there, off the training process. It must pickle cheaply (workers may be spawned).
    """
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    if views is not None:
        transform = ViewReplay(transform, views)
    common = dict(transform=transform, tokenizers=dict(tokenizers), batch_size=batch_size, seed=seed, rank=rank,
                  world_size=world_size, workers=workers, start_step=start_step, batch_extras=batch_extras)
    if isinstance(dataset, ShardPairs):
        if subset:
            raise UserError("a training subset needs a map-style dataset (synthetic, csv), not shards")
        if keep is not None:
            dataset = ShardPairs(dataset.path, dataset.shuffle_buffer, keep=KeptKeys.load(keep))
        loader = _shard_loader(dataset, **common)
    else:
        loader = _map_loader(dataset, subset=subset, keep=keep, **common)
    return _checked(loader, repr(dataset))


# ----------------------------------------------------------------------------- shared by both kinds

def _mix(*numbers: int) -> int:
    """One well-mixed 63-bit seed from several integers (so (seed, epoch) and (seed+1, epoch-1) differ)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, np.uint64)[0] >> 1)


def sample_generator(seed: int, epoch: int, sample_id: int) -> torch.Generator:
    """The generator a sample's augmentation draws from: a pure function of what the sample is."""
    return torch.Generator().manual_seed(_mix(seed, epoch, sample_id))


class ViewReplay:
    """A PairedTransform that renders a sample's stored view (looked up by key) instead of sampling one."""

    def __init__(self, transform, views):
        self.transform, self.views = transform, views

    def __call__(self, image, generator: torch.Generator, key: str) -> dict:
        return self.transform.replay(image, self.views.get(key), generator)


def _prepare(sample: dict, transform, *, seed: int, epoch: int, sample_id: int, index: int) -> dict:
    generator = sample_generator(seed, epoch, sample_id)
    if isinstance(transform, ViewReplay):
        views = transform(sample["image"], generator, key=sample["key"])
    else:
        views = transform(sample["image"], generator)
    return {"views": views, "caption": sample["caption"], "key": sample["key"], "index": index, "epoch": epoch}


def _collate(prepared: list[dict], tokenizers: dict[str, Callable], bad: Counter,
             batch_extras: Callable[[dict], dict] | None = None) -> dict:
    """Stack views, tokenize captions (this runs inside DataLoader workers), attach bookkeeping.

    Names that share a tensor (teacher and student with one ImageSpec) or a tokenizer (the loop hands
    the teacher the student's when they agree) share one stacked tensor: stacked, tokenized and sent
    to the training process once.
    """
    batch, stacked = {}, {}
    for name, first in prepared[0]["views"].items():
        if id(first) not in stacked:
            stacked[id(first)] = torch.stack([p["views"][name] for p in prepared])
        batch[name] = stacked[id(first)]
    captions = [p["caption"] for p in prepared]
    tokenized = {}
    for name, tokenize in tokenizers.items():
        if id(tokenize) not in tokenized:
            tokenized[id(tokenize)] = tokenize(captions)
        batch[name] = tokenized[id(tokenize)]
    batch.update(caption=captions, key=[p["key"] for p in prepared],
                 index=torch.tensor([p["index"] for p in prepared], dtype=torch.long),
                 bad=dict(bad), epoch=prepared[-1]["epoch"])
    if batch_extras is not None:
        batch.update(batch_extras(batch))
    return batch


def _warn_skipped(kind: str, detail: str) -> None:
    """Name a skipped sample (file, shard member) in the log, up to a limit per process."""
    global _bad_warnings
    _bad_warnings += 1
    if _bad_warnings <= _MAX_BAD_WARNINGS:
        log.warning("skipped sample (%s): %s", kind, detail)
    elif _bad_warnings == _MAX_BAD_WARNINGS + 1:
        log.warning("more skipped samples; no longer listing them (counts go to results.json)")


def _checked(batches: Iterator[dict], name: str) -> Iterator[dict]:
    """Raise a worker's fatal report as a UserError, and stop early if most samples are unreadable."""
    attempted, bad = 0, Counter()
    for batch in batches:
        if "fatal" in batch:
            raise UserError(batch["fatal"])
        if attempted < _BACKSTOP_WINDOW:
            bad.update(batch["bad"])
            attempted += len(batch["key"]) + sum(batch["bad"].values())
            total_bad = sum(bad.values())
            if total_bad > _BACKSTOP_WINDOW // 2 or (attempted >= _BACKSTOP_WINDOW and 2 * total_bad > attempted):
                raise UserError(f"{name}: {total_bad} of the first {attempted} samples are unreadable "
                                f"({dict(bad)}); is the data path right?")
        yield batch


def _data_loader(dataset, *, workers: int, seed: int, **kwargs) -> DataLoader:
    # An explicit generator: DataLoader would otherwise draw worker seeds from the global RNG and
    # shift the training RNG stream (dropout...) between a continuous and a resumed run.
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed), **kwargs)


# ----------------------------------------------------------------------------- map-style datasets

@dataclass(frozen=True)
class _Slot:
    """One position of a batch: the planned dataset index first, then its replacements."""

    epoch: int
    candidates: tuple[int, ...]


class _BatchPlan(Sampler):
    """Batch sampler yielding lists of :class:`_Slot`, from global step ``start_step`` on, forever.

    A bad sample is replaced by the sample in the same slot of the next batch (then the one after):
    unlike the very next index, that never duplicates a sample inside the batch being filled.
    """

    def __init__(self, num_samples: int, *, batch_size: int, seed: int, rank: int, world_size: int, start_step: int,
                 rows: np.ndarray | None = None):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rows = None if rows is None else torch.as_tensor(rows)  # position -> dataset row (a keep list)
        self.rank, self.per_rank, self.start_step = rank, num_samples // world_size, start_step
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                            f"{world_size} ranks")

    def rank_share(self, epoch: int) -> list[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
        share = order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return (share if self.rows is None else self.rows[share]).tolist()

    def _slot(self, epoch: int, share: list[int], position: int) -> _Slot:
        candidates = (share[(position + k * self.batch_size) % len(share)] for k in range(_MAX_CANDIDATES))
        return _Slot(epoch, tuple(dict.fromkeys(candidates)))

    def __iter__(self) -> Iterator[list[_Slot]]:
        epoch, step = divmod(self.start_step, self.steps_per_epoch)
        while True:
            share = self.rank_share(epoch)
            for step in range(step, self.steps_per_epoch):
                first = step * self.batch_size
                yield [self._slot(epoch, share, first + j) for j in range(self.batch_size)]
            epoch, step = epoch + 1, 0


class _SlotReader(Dataset):
    """Reads one slot: the first readable candidate, transformed; counts the unreadable ones."""

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, slot: _Slot) -> dict:
        bad, last_error = Counter(), ""
        for index in slot.candidates:
            try:
                sample = self.dataset[index]
            except BadSample as err:
                bad[err.kind] += 1
                last_error = str(err)
                _warn_skipped(err.kind, err.detail)
                continue
            except OSError as err:  # a dataset that lets PIL/file errors through
                bad["unreadable"] += 1
                last_error = f"unreadable: {err}"
                continue
            prepared = _prepare(sample, self.transform, seed=self.seed, epoch=slot.epoch, sample_id=index, index=index)
            return {"prepared": prepared, "bad": bad}
        return {"bad": bad, "fatal": f"{self.dataset!r}: {len(slot.candidates)} samples in a row are unreadable "
                                     f"(last: {last_error}); is the data path right?"}


class _MapCollate:
    def __init__(self, tokenizers: dict[str, Callable], batch_extras: Callable[[dict], dict] | None = None):
        self.tokenizers, self.batch_extras = tokenizers, batch_extras

    def __call__(self, slots: list[dict]) -> dict:
        fatal = next((s["fatal"] for s in slots if "fatal" in s), None)
        if fatal:
            return {"fatal": fatal}
        bad = sum((s["bad"] for s in slots), Counter())
        return _collate([s["prepared"] for s in slots], self.tokenizers, bad, self.batch_extras)


def _map_loader(dataset, *, transform, tokenizers, batch_size, seed, rank, world_size, workers, start_step,
                subset, keep=None, batch_extras=None) -> DataLoader:
    size = len(dataset)
    if subset is not None and subset > size:
        raise UserError(f"subset of {subset} samples is larger than {dataset!r} ({size} samples)")
    rows = _kept_rows(keep, size, subset or size, repr(dataset))
    plan = _BatchPlan(subset or size if rows is None else len(rows), batch_size=batch_size, seed=seed, rank=rank,
                      world_size=world_size, start_step=start_step, rows=rows)
    return _data_loader(_SlotReader(dataset, transform, seed), batch_sampler=plan,
                        collate_fn=_MapCollate(tokenizers, batch_extras), workers=workers, seed=seed)


def _kept_rows(keep, size: int, limit: int, name: str) -> np.ndarray | None:
    """A keep list (rows or a .npy path) as sorted unique rows below ``limit``; None when there is none."""
    if keep is None:
        return None
    if isinstance(keep, str) or hasattr(keep, "__fspath__"):
        try:
            keep = np.load(keep)
        except (OSError, ValueError) as err:
            raise UserError(f"data.keep: cannot read {keep} as a .npy array of row indices ({err})") from None
    rows = np.unique(np.asarray(keep))
    if rows.dtype.kind in "US":
        raise UserError(f"data.keep lists sample keys (curated from a teacher cache of WebDataset shards): it "
                        f"applies to webdataset data, not to {name}")
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (len(rows) and (rows[0] < 0 or rows[-1] >= size)):
        raise UserError(f"data.keep must list integer rows of {name} (0..{size - 1}); got {rows.dtype} "
                        f"{rows.min() if rows.size else ''}..{rows.max() if rows.size else ''}")
    return rows[rows < limit].astype(np.int64)


# ----------------------------------------------------------------------------- shards

class _ShardBatches(IterableDataset):
    """Inside each DataLoader worker: this reader's share of the shards, bad samples skipped, batched."""

    def __init__(self, shards: ShardPairs, *, transform, tokenizers, batch_size: int, seed: int, rank: int,
                 world_size: int, batch_extras=None):
        self.shards, self.transform, self.tokenizers, self.batch_extras = shards, transform, tokenizers, batch_extras
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        try:
            yield from self._batches(reader=self.rank * workers + worker, readers=self.world_size * workers)
        except UserError as err:  # raised in the main process by _checked, as one line, not a worker traceback
            yield {"fatal": str(err)}

    def _batches(self, reader: int, readers: int) -> Iterator[dict]:
        prepared, bad, bad_in_a_row = [], Counter(), 0
        for item in self.shards.stream(seed=self.seed, reader=reader, readers=readers):
            if "bad" in item:
                bad[item["bad"]] += 1
                _warn_skipped(item["bad"], item.get("detail", ""))
                bad_in_a_row += 1
                if bad_in_a_row >= _MAX_CONSECUTIVE_BAD:
                    raise UserError(f"{self.shards!r}: {bad_in_a_row} unusable samples in a row ({dict(bad)})")
                continue
            bad_in_a_row = 0
            # Keys, not positions, identify a streamed sample; crc32 is stable across processes (hash() is not).
            prepared.append(_prepare(item, self.transform, seed=self.seed, epoch=item["epoch"],
                                     sample_id=zlib.crc32(item["key"].encode()), index=-1))
            if len(prepared) == self.batch_size:
                yield _collate(prepared, self.tokenizers, bad, self.batch_extras)
                prepared, bad = [], Counter()


def _shard_loader(shards: ShardPairs, *, transform, tokenizers, batch_size, seed, rank, world_size, workers,
                  start_step, batch_extras=None) -> DataLoader:
    """Shards cannot be skipped into without reading them, so resume is not sample-exact: a run
    resumed at step k > 0 streams with a seed derived from (seed, k), which keeps it from replaying
    the samples the run began with (as open_clip does for resampled shards)."""
    stream_seed = seed if start_step == 0 else _mix(seed, start_step)
    batches = _ShardBatches(shards, transform=transform, tokenizers=tokenizers, batch_size=batch_size,
                            seed=stream_seed, rank=rank, world_size=world_size, batch_extras=batch_extras)
    return _data_loader(batches, batch_size=None, collate_fn=_as_is, workers=workers, seed=seed)


def _as_is(batch: dict) -> dict:
    # Batches are collated inside the workers already; a module-level function so workers can pickle it.
    return batch
