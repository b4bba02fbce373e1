"""Map-style datasets (synthetic, CSV): a batch plan that is a pure function of ``(seed, step)``.

Each epoch is a permutation from ``(seed, epoch)``, split into equal per-rank shares, cut into
fixed-size batches. Resuming at step ``k`` therefore replays exactly, without reading a single
skipped image, and the result does not depend on the number of DataLoader workers.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipdistill.data.backstop import warn_skipped
from clipdistill.data.bad_samples import BadSample
from clipdistill.data.batch import collate, data_loader, mix, prepare
from clipdistill.data.keep import kept_rows
from clipdistill.errors import UserError

# A slot tries its planned sample and then up to this many replacements before giving up.
MAX_CANDIDATES = 32


@dataclass(frozen=True)
class Slot:
    """One position of a batch: the planned dataset index first, then its replacements."""

    epoch: int
    candidates: tuple[int, ...]


class BatchPlan(Sampler):
    """Batch sampler yielding lists of :class:`Slot`, from global step ``start_step`` on, forever.

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

    def rank_share(self, epoch: int) -> np.ndarray:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(mix(self.seed, epoch)))
        share = order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return (share if self.rows is None else self.rows[share]).numpy()

    def _slots(self, epoch: int, share: np.ndarray, first: int) -> list[Slot]:
        """The batch starting at ``first``: slot j's candidates are the share's positions first + j + k·batch_size
        (mod its length), k < MAX_CANDIDATES, repeats dropped; computed for the whole batch at once (this runs
        in the training process, every step)."""
        positions = first + np.arange(self.batch_size)[:, None] + self.batch_size * np.arange(MAX_CANDIDATES)
        return [Slot(epoch, tuple(dict.fromkeys(row))) for row in share[positions % len(share)].tolist()]

    def __iter__(self) -> Iterator[list[Slot]]:
        epoch, step = divmod(self.start_step, self.steps_per_epoch)
        while True:
            share = self.rank_share(epoch)
            for step in range(step, self.steps_per_epoch):
                first = step * self.batch_size
                yield self._slots(epoch, share, first)
            epoch, step = epoch + 1, 0


class SlotReader(Dataset):
    """Reads one slot: the first readable candidate, transformed; counts the unreadable ones."""

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, slot: Slot) -> dict:
        bad, last_error = Counter(), ""
        for index in slot.candidates:
            try:
                sample = self.dataset[index]
            except BadSample as err:
                bad[err.kind] += 1
                last_error = str(err)
                warn_skipped(err.kind, err.detail)
                continue
            except OSError as err:  # a dataset that lets PIL/file errors through
                bad["unreadable"] += 1
                last_error = f"unreadable: {err}"
                continue
            prepared = prepare(sample, self.transform, seed=self.seed, epoch=slot.epoch, sample_id=index, index=index)
            return {"prepared": prepared, "bad": bad}
        return {"bad": bad, "fatal": f"{self.dataset!r}: {len(slot.candidates)} samples in a row are unreadable "
                                     f"(last: {last_error}); is the data path right?"}


class MapCollate:
    def __init__(self, tokenizers: dict[str, Callable], batch_extras: Callable[[dict], dict] | None = None):
        self.tokenizers, self.batch_extras = tokenizers, batch_extras

    def __call__(self, slots: list[dict]) -> dict:
        fatal = next((s["fatal"] for s in slots if "fatal" in s), None)
        if fatal:
            return {"fatal": fatal}
        bad = sum((s["bad"] for s in slots), Counter())
        return collate([s["prepared"] for s in slots], self.tokenizers, bad, self.batch_extras)


def map_loader(dataset, *, transform, tokenizers, batch_size, seed, rank, world_size, workers, start_step,
               subset, keep=None, batch_extras=None) -> DataLoader:
    size = len(dataset)
    if subset is not None and subset > size:
        raise UserError(f"subset of {subset} samples is larger than {dataset!r} ({size} samples)")
    rows = kept_rows(keep, size, subset or size, repr(dataset))
    plan = BatchPlan(subset or size if rows is None else len(rows), batch_size=batch_size, seed=seed, rank=rank,
                     world_size=world_size, start_step=start_step, rows=rows)
    return data_loader(SlotReader(dataset, transform, seed), batch_sampler=plan,
                       collate_fn=MapCollate(tokenizers, batch_extras), workers=workers, seed=seed)
