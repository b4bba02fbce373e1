"""How a dataset is cut into cache shards, and which rank writes which.

A *unit* is the samples of one cache shard. Map-style datasets (synthetic, CSV) are cut into runs
of ``shard_size`` consecutive positions; WebDataset input gives one unit per input tar (its samples
in tar order), so a cache shard is the teacher's view of exactly one data shard. Rank ``r`` of ``W``
writes units ``r, r + W, r + 2W, ...``: every unit has exactly one writer, none is skipped.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds

from clipdistill.data.bad_samples import BadSample
from clipdistill.data.shards import ShardPairs, to_pair


@dataclass(frozen=True)
class Unit:
    """Cache shard ``number``: dataset positions ``positions`` (map-style) or the input tar ``url``."""

    number: int
    positions: range | None = None
    url: str | None = None

    @property
    def size_hint(self) -> int | None:
        """Samples in the unit if known without reading it (map-style), else None."""
        return len(self.positions) if self.positions is not None else None


def plan_units(dataset, shard_size: int) -> list[Unit]:
    """Every unit of ``dataset`` in order."""
    if isinstance(dataset, ShardPairs):
        return [Unit(number, url=url) for number, url in enumerate(dataset.shards)]
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    total = len(dataset)
    return [Unit(n, positions=range(n * shard_size, min((n + 1) * shard_size, total)))
            for n in range(math.ceil(total / shard_size))]


def units_of_rank(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return units[rank::world_size]


def _skip_and_continue(err: Exception) -> bool:
    return True  # a truncated tar member is counted as missing, like the training loader does


def raw_items(dataset, unit: Unit) -> Iterator:
    """The unit's items before decoding (cheap): dataset positions, or raw tar samples."""
    if unit.positions is not None:
        yield from unit.positions
        return
    yield from wds.DataPipeline(wds.SimpleShardList([unit.url]), wds.tarfile_to_samples(handler=_skip_and_continue))


def with_image_ids(dataset, items) -> Iterator[tuple[object, str | None, bool]]:
    """``(item, image id, repeat)`` for each raw item of one unit.

    A dataset with ``image_id(position)`` (CSV: the image file) names each row's image; ``repeat`` is
    True for a row whose image an earlier row of the same unit showed, so the cache embeds that image
    once and the row only adds its caption. Datasets without it (synthetic, WebDataset) give None:
    every item its own image.
    """
    image_id = getattr(dataset, "image_id", None)
    seen: set[str] = set()
    for item in items:
        name = image_id(item) if image_id is not None and isinstance(item, int) else None
        yield item, name, name in seen
        if name is not None:
            seen.add(name)


def decode_item(dataset, item) -> dict:
    """A raw item as ``{"image", "caption", "key", "index"}``; raises BadSample when unusable."""
    if isinstance(item, int):
        try:
            sample = dataset[item]
        except OSError as err:  # a dataset letting file errors through, as the training loader tolerates
            raise BadSample("unreadable", str(err)) from None
        return {**sample, "index": item}
    return {**to_pair(item, getattr(dataset, "has_captions", True)), "index": -1}
