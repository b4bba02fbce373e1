"""WebDataset shards: streamed, each DataLoader worker reading its share of the shards.

Resume is sample-exact: every batch carries its reader's stream position, the training loop's
checkpoint records the last trained position of every reader (:meth:`TrainBatches.state`), and a
resumed reader replays its epoch up to there without decoding (the stream is a pure function of the
seed and the reader). The DataLoader takes batches from its workers in turn, so after ``k`` steps the
next batch is worker ``k mod W``'s: on resume, worker ``w`` plays reader ``(w + k) mod W`` and the
batches come in the uninterrupted order.
"""
from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipdistill.data.backstop import warn_skipped
from clipdistill.data.batch import as_is, collate, data_loader, mix, prepare
from clipdistill.data.shards import ShardPairs
from clipdistill.errors import UserError

log = logging.getLogger("clipdistill.data.loader")
# A shard reader that meets this many unusable samples in a row stops: the data is not what it should be.
MAX_CONSECUTIVE_BAD = 1000


class ShardBatches(IterableDataset):
    """Inside each DataLoader worker: this reader's share of the shards, bad samples skipped, batched."""

    def __init__(self, shards: ShardPairs, *, transform, tokenizers, batch_size: int, seed: int, rank: int,
                 world_size: int, batch_extras=None, rotation: int = 0, positions: dict | None = None):
        self.shards, self.transform, self.tokenizers, self.batch_extras = shards, transform, tokenizers, batch_extras
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.rotation, self.positions = rotation, positions or {}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        reader = self.rank * workers + (worker + self.rotation) % workers
        try:
            yield from self._batches(reader=reader, readers=self.world_size * workers)
        except UserError as err:  # raised in the main process by backstop.checked, as one line, not a traceback
            yield {"fatal": str(err)}

    def _batches(self, reader: int, readers: int) -> Iterator[dict]:
        prepared, bad, bad_in_a_row = [], Counter(), 0
        start = tuple(self.positions.get(reader, (0, 0)))
        for item in self.shards.stream(seed=self.seed, reader=reader, readers=readers, start=start):
            if "bad" in item:
                bad[item["bad"]] += 1
                warn_skipped(item["bad"], item.get("detail", ""))
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_CONSECUTIVE_BAD:
                    raise UserError(f"{self.shards!r}: {bad_in_a_row} unusable samples in a row ({dict(bad)})")
                continue
            bad_in_a_row = 0
            # Keys, not positions, identify a streamed sample; crc32 is stable across processes (hash() is not).
            prepared.append(prepare(item, self.transform, seed=self.seed, epoch=item["epoch"],
                                    sample_id=zlib.crc32(item["key"].encode()), index=-1))
            if len(prepared) == self.batch_size:
                batch = collate(prepared, self.tokenizers, bad, self.batch_extras)
                yield {**batch, "position": {"reader": reader, "readers": readers, "at": item["position"]}}
                prepared, bad = [], Counter()


def shard_loader(shards: ShardPairs, *, transform, tokenizers, batch_size, seed, rank, world_size, workers,
                 start_step, batch_extras=None, resume_from: dict | None = None) -> DataLoader:
    """``resume_from``: the checkpoint's reader positions (:meth:`TrainBatches.state`). Without them (an
    older checkpoint, another number of ranks or workers) a run resumed at step k > 0 streams with a seed
    derived from (seed, k), which at least keeps it from replaying the samples the run began with."""
    readers = world_size * max(1, workers)
    exact = bool(resume_from) and resume_from.get("readers") == readers
    if start_step > 0 and not exact:
        log.warning("shards: no data position for %d readers in the checkpoint; resuming on a fresh stream seed "
                    "(not sample-exact)", readers)
    stream_seed = seed if start_step == 0 or exact else mix(seed, start_step)
    batches = ShardBatches(shards, transform=transform, tokenizers=tokenizers, batch_size=batch_size,
                           seed=stream_seed, rank=rank, world_size=world_size, batch_extras=batch_extras,
                           rotation=start_step % max(1, workers) if exact else 0,
                           positions=resume_from["positions"] if exact else None)
    return data_loader(batches, batch_size=None, collate_fn=as_is, workers=workers, seed=seed)

