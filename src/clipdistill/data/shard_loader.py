"""WebDataset shards: streamed, each DataLoader worker reading its share of the shards."""
from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipdistill.data.backstop import warn_skipped
from clipdistill.data.batch import as_is, collate, data_loader, mix, prepare
from clipdistill.data.shards import ShardPairs
from clipdistill.errors import UserError

# A shard reader that meets this many unusable samples in a row stops: the data is not what it should be.
MAX_CONSECUTIVE_BAD = 1000


class ShardBatches(IterableDataset):
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
        except UserError as err:  # raised in the main process by backstop.checked, as one line, not a traceback
            yield {"fatal": str(err)}

    def _batches(self, reader: int, readers: int) -> Iterator[dict]:
        prepared, bad, bad_in_a_row = [], Counter(), 0
        for item in self.shards.stream(seed=self.seed, reader=reader, readers=readers):
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
                yield collate(prepared, self.tokenizers, bad, self.batch_extras)
                prepared, bad = [], Counter()


def shard_loader(shards: ShardPairs, *, transform, tokenizers, batch_size, seed, rank, world_size, workers,
                 start_step, batch_extras=None) -> DataLoader:
    """Shards cannot be skipped into without reading them, so resume is not sample-exact: a run
    resumed at step k > 0 streams with a seed derived from (seed, k), which keeps it from replaying
    the samples the run began with (as open_clip does for resampled shards)."""
    stream_seed = seed if start_step == 0 else mix(seed, start_step)
    batches = ShardBatches(shards, transform=transform, tokenizers=tokenizers, batch_size=batch_size,
                           seed=stream_seed, rank=rank, world_size=world_size, batch_extras=batch_extras)
    return data_loader(batches, batch_size=None, collate_fn=as_is, workers=workers, seed=seed)

