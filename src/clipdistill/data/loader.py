"""The training loader: the one thing the training loop asks for data.

    dataset = build_dataset("csv", path="pairs.tsv")
    batches = train_batches(dataset, transform=..., tokenizers=..., batch_size=256, seed=0)
    batch = next(batches)   # forever: epochs chain

Its parts, one concern each: :mod:`~clipdistill.data.datasets` (which dataset), :mod:`.map_loader`
(the seeded batch plan of map-style data, bad-sample replacement), :mod:`.shard_loader` (streamed
WebDataset shards), :mod:`.batch` (the :class:`~clipdistill.data.batch.Batch` type, seeded
augmentation, view replay, collation in the workers), :mod:`.keep` (curated keep lists) and
:mod:`.backstop` (naming skipped samples, stopping when most are unreadable).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from clipdistill.data.backstop import checked
from clipdistill.data.batch import Batch, ViewReplay, arrays_as_tensors
from clipdistill.data.map_loader import map_loader
from clipdistill.data.shard_loader import shard_loader
from clipdistill.data.shards import KeptKeys, ShardPairs
from clipdistill.errors import UserError


def train_batches(dataset, *, transform, tokenizers: dict[str, Callable], batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1, workers: int = 0, start_step: int = 0, keep=None,
                  subset: int | None = None, views=None, batch_extras: Callable[[dict], dict] | None = None,
                  resume_from: dict | None = None) -> "TrainBatches":
    """Endless training batches (:class:`~clipdistill.data.batch.Batch`) for this rank, from global step
    ``start_step`` on.

    ``transform`` renders each crop once per ImageSpec it holds (``student_image``, ``teacher_image``);
    ``tokenizers`` maps batch keys (``student_text``, ``teacher_text``) to tokenizers.

    ``keep`` (``clipdistill curate``'s ``keep.npy``, or the array itself) restricts the data: for a
    map-style dataset it lists dataset rows (those below ``subset`` count when both are given); for
    WebDataset shards, sample keys (a ``.npy`` path; see :class:`~clipdistill.data.shards.KeptKeys`).

    ``views`` (a teacher cache's ``CachedViews``: key -> stored views or None) makes every sample replay
    one of its stored views, chosen from ``(seed, epoch, sample)``, instead of sampling a new one; the
    batch then also has ``view_index`` ``(B,)`` (which stored view; -1 where the key had none).

    ``batch_extras`` (batch -> dict of more entries) runs on each collated batch where it is collated,
    in the DataLoader workers: e.g. :class:`clipdistill.targets.StoredRows` gathers a teacher cache's rows
    there, off the training process. It must pickle cheaply (workers may be spawned).

    ``resume_from``: what :meth:`TrainBatches.state` returned when the checkpoint was saved (shards
    resume exactly from it; map-style data needs only ``start_step``).
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
            dataset = ShardPairs(dataset.path, dataset.shuffle_buffer, keep=KeptKeys.load(keep),
                                 has_captions=dataset.has_captions)
        loader = shard_loader(dataset, resume_from=resume_from, **common)
    else:
        loader = map_loader(dataset, subset=subset, keep=keep, **common)
    return TrainBatches(checked(loader, repr(dataset)))


class TrainBatches:
    """The endless iterator of training batches, which remembers where the data stream stands.

    :meth:`state` (after ``k`` batches were taken) is what a checkpoint of step ``k`` stores so that a
    resumed run reads on exactly where this one stopped: for streamed shards each reader's position
    (``{"readers": R, "positions": {reader: (epoch, n)}}``); for map-style data nothing, since their plan
    is a pure function of the step.
    """

    def __init__(self, batches: Iterator[Batch]):
        self._batches = batches
        self._positions: dict[int, tuple[int, int]] = {}
        self._readers = 0

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> Batch:
        batch = arrays_as_tensors(next(self._batches))  # the small tensors a worker sent as arrays
        position = batch.pop("position", None)
        if position is not None:
            self._positions[position["reader"]] = tuple(position["at"])
            self._readers = position["readers"]
        return batch

    def state(self) -> dict:
        return {"readers": self._readers, "positions": dict(self._positions)} if self._readers else {}
