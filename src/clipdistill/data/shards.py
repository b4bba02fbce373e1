"""Image–caption pairs in WebDataset tar shards, laid out as img2dataset writes them.

``shards/{00000..00099}.tar`` with members ``KEY.jpg`` (or ``.png``/``.webp``) + ``KEY.txt``
[+ ``KEY.json``]. Shards are read with webdataset's pipeline; the stream is split between readers
(``rank x DataLoader worker``) so that in one epoch every sample goes to exactly one reader.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds

from clipdistill.data.bad_samples import BadSample, decode_image
from clipdistill.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_shards(path: str) -> list[str]:
    """Shard URLs from a brace pattern (``a/{000..009}.tar``, ``::``-joined lists) or a folder of tars.

    Local files must exist; URLs with a scheme (``pipe:``, ``s3://``, ...) are taken on trust.
    """
    if not path:
        raise UserError("data.path is empty: give a shard pattern like shards/{00000..00099}.tar")
    if Path(path).is_dir():
        shards = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not shards:
            raise UserError(f"no .tar shards in folder {path}")
        return shards
    shards = wds.shardlists.expand_urls(path)
    missing = [s for s in shards if not _is_remote(s) and not Path(s).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(shards)} shards not found, first: {missing[0]}")
    return shards


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


class _ShardErrors:
    """A webdataset handler that notes unreadable shard data (a truncated or corrupt tar) and goes on.

    webdataset's warn_and_continue sleeps 0.5 s per error; a truncated shard should not stall training.
    The stream reports the errors noted between two samples as one ``unreadable_shard`` bad sample
    (webdataset reports one truncation twice: from the member reader and from the shard expander).
    """

    def __init__(self):
        self.pending: list[str] = []

    def __call__(self, err: Exception) -> bool:
        log.warning("skipping unreadable shard data: %s", err)
        self.pending.append(str(err))
        return True

    def drain(self) -> list[str]:
        errors, self.pending = self.pending, []
        return errors


def _unsafe_key(key: str) -> bool:
    # A tar member named ../x or /x: harmless while we only read, but keys become file and index
    # names downstream (caches, exports), so such a sample is never let in.
    parts = key.replace("\\", "/").split("/")
    return key.startswith("/") or ".." in parts


def to_pair(sample: dict, captions: bool = True) -> dict:
    """A raw webdataset sample (``{"__key__", "jpg": bytes, "txt": bytes, ...}``) -> image/caption/key.

    Decoded here rather than with ``wds.decode`` so that a bad sample becomes a counted
    :class:`BadSample` instead of an exception a handler must swallow. ``captions`` False (shards
    without ``.txt`` members): the caption is None and a ``.txt`` member is ignored.
    """
    key = sample["__key__"]
    if _unsafe_key(key):
        raise BadSample("unsafe_name", key)
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image_ext is None:
        raise BadSample("missing_image", key)
    if not captions:
        return {"image": decode_image(sample[image_ext], name=f"{sample.get('__url__', '')}:{key}.{image_ext}"),
                "caption": None, "key": key}
    if "txt" not in sample:
        raise BadSample("missing_caption", key)
    caption = sample["txt"].decode("utf-8", errors="replace").strip()
    if not caption:
        raise BadSample("empty_caption", key)
    return {"image": decode_image(sample[image_ext], name=f"{sample.get('__url__', '')}:{key}.{image_ext}"),
            "caption": caption, "key": key}


class KeptKeys:
    """A curated keep list of WebDataset sample keys: a sorted string ``.npy`` (``clipdistill curate`` of a
    teacher cache of shards writes one), memory-mapped and searched by bisection, so a list of hundreds of
    millions of keys costs its file size in page cache, not Python strings in every DataLoader worker
    (forked workers share the map; a spawn or forkserver start method would copy it into each)."""

    def __init__(self, keys: np.ndarray, source: str = ""):
        self.keys, self.source = keys, source

    @classmethod
    def load(cls, path: str | Path | np.ndarray) -> "KeptKeys":
        """From a ``.npy`` path (memory-mapped) or an array already in memory."""
        if not isinstance(path, (str, Path)):
            keys, path = np.asarray(path), "an array"
        else:
            try:
                keys = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UserError(f"data.keep: cannot read {path} as a .npy keep list ({err})") from None
        if keys.dtype.kind in "iu":
            raise UserError(f"data.keep: {path} lists dataset rows, but WebDataset samples have no rows: curate a "
                            "teacher cache of these shards (clipdistill cache, then curate) to get a list of keys")
        if keys.ndim != 1 or keys.dtype.kind not in "US":
            raise UserError(f"data.keep: {path} must be a 1-D array of sample keys, got {keys.dtype} {keys.shape}")
        if keys.dtype.kind == "S":  # bytes never equal the str keys webdataset yields: decode (in memory)
            keys = np.char.decode(keys, "utf-8")
        if len(keys) > 1 and not np.all(keys[:-1] < keys[1:]):
            raise UserError(f"data.keep: the keys in {path} are not sorted and unique (clipdistill curate writes them so)")
        return cls(keys, str(path))

    def __contains__(self, key: str) -> bool:
        position = int(np.searchsorted(self.keys, key))
        return position < len(self.keys) and self.keys[position] == key

    def __len__(self) -> int:
        return len(self.keys)


def _first_sample_has_text(shard: str) -> bool:
    """Whether the first sample of ``shard`` has a ``.txt`` member (True for an empty or unreadable shard:
    the captioned reader then reports what is wrong with it)."""
    for raw in wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=wds.ignore_and_continue)):
        return "txt" in raw
    return True


class ShardPairs:
    """A set of shards, streamed forever by :meth:`stream` (one reader's share).

    ``keep`` (:class:`KeptKeys`) restricts the stream to those sample keys; the others are dropped before
    their image is decoded and are not counted as bad.
    """

    def __init__(self, path: str, shuffle_buffer: int = 1000, keep: KeptKeys | None = None,
                 has_captions: bool | None = None):
        self.path = path
        self.shards = expand_shards(path)
        self.shuffle_buffer = shuffle_buffer
        self.keep = keep
        # Images only when the first sample has no .txt member (shards of one collection are written alike).
        self.has_captions = _first_sample_has_text(self.shards[0]) if has_captions is None else has_captions

    def _kept(self, raw: dict) -> bool:
        return self.keep is None or raw.get("__key__") in self.keep

    def _epoch_pipeline(self, epoch: int, seed: int, reader: int, readers: int,
                        handler: _ShardErrors) -> wds.DataPipeline:
        # Split with explicit arguments (wds.slice) instead of split_by_node/split_by_worker, which
        # read the rank from the environment: the caller decides who reads what.
        mine = wds.slice(reader, None, readers)
        by_shard = len(self.shards) >= readers
        return wds.DataPipeline(
            wds.SimpleShardList(self.shards, seed=seed + epoch),  # epoch e: shard order from seed + e
            *([mine] if by_shard else []),
            wds.tarfile_to_samples(handler=handler),
            *([wds.select(self._kept)] if self.keep is not None else []),
            # Fewer shards than readers: everyone reads every shard and keeps every readers-th sample.
            *([] if by_shard else [mine]),
            wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                        rng=random.Random(f"{seed}/{epoch}/{reader}")),
        )

    def stream(self, *, seed: int, reader: int, readers: int, start: tuple[int, int] = (0, 0)) -> Iterator[dict]:
        """This reader's samples, epoch after epoch, forever.

        Yields ``{"image", "caption", "key", "epoch", "position"}`` for good samples and ``{"bad": kind,
        "epoch", "position"}`` for unusable ones (the caller counts them). ``position`` is ``(epoch, n)``:
        this item was the reader's n-th of that epoch. ``start`` (a position) resumes exactly after it: the
        stream is a pure function of (seed, reader, readers), so the epoch is replayed up to there without
        decoding an image. Raises UserError if a whole epoch is empty.
        """
        shard_errors = _ShardErrors()
        start_epoch, skip = start
        for epoch in range(start_epoch, 2**62):
            seen = 0
            for raw in self._epoch_pipeline(epoch, seed, reader, readers, shard_errors):
                seen += 1
                if epoch == start_epoch and seen <= skip:  # before the resume point: already trained on
                    shard_errors.drain()
                    continue
                yield from self._unreadable(shard_errors, epoch)
                try:
                    item = {**to_pair(raw, self.has_captions), "epoch": epoch}
                except BadSample as bad:
                    item = {"bad": bad.kind, "detail": bad.detail, "epoch": epoch}
                yield {**item, "position": (epoch, seen)}
            yield from self._unreadable(shard_errors, epoch)
            if seen == 0:
                kept = " that data.keep keeps" if self.keep is not None else ""
                raise UserError(f"{self!r}: reader {reader} of {readers} found no samples{kept} in its shards")

    @staticmethod
    def _unreadable(shard_errors: _ShardErrors, epoch: int) -> Iterator[dict]:
        errors = shard_errors.drain()
        if errors:
            yield {"bad": "unreadable_shard", "detail": errors[0], "epoch": epoch}

    def __repr__(self) -> str:
        kept = f", keep {len(self.keep)} keys of {self.keep.source}" if self.keep is not None else ""
        images_only = "" if self.has_captions else ", images only"
        return f"ShardPairs('{self.path}', {len(self.shards)} shards{kept}{images_only})"
