"""Run the teacher once over a dataset and store what every loss needs from it.

For each sample: the teacher's normalized embedding of ``views`` augmented views of the image,
each view's parameters (the ``view`` tuple of :mod:`clipdistill.data.transforms`, so training can
render exactly that crop for the student), and the normalized embedding of its caption.

Work is cut into units (:mod:`clipdistill.cache.units`), one shard file each, written atomically.
Resuming = skipping every unit whose file exists; every unit is computed the same way whether or
not the run was interrupted (its views from ``(seed, key)``, its teacher batches inside the unit),
so a resumed cache equals an uninterrupted one. Ranks write disjoint units; whoever sees the last
shard on disk writes the index and completes the manifest (:func:`finalize`).
"""
from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from clipdistill.cache import manifest as manifest_lib
from clipdistill.cache.index import write_index
from clipdistill.cache.storage import DTYPES, check_encoding, read_meta, shard_path, write_shard
from clipdistill.cache.units import Unit, decode_item, plan_units, raw_items, units_of_rank
from clipdistill.data.bad_samples import BadSample
from clipdistill.data.loader import sample_generator
from clipdistill.data.transforms import apply_view, sample_view

log = logging.getLogger(__name__)


def view_generator(seed: int, key: str) -> torch.Generator:
    """Where a sample's stored views come from: its key (crc32 is stable across processes)."""
    return sample_generator(seed, 0, zlib.crc32(key.encode()))


def render_views(image, key: str, *, views: int, spec, scale, ratio, hflip: bool, seed: int):
    """``views`` sampled views of ``image``: parameters ``(V, 5)`` int32 and teacher pixels ``(V, 3, S, S)``."""
    image = image.convert("RGB")
    generator = view_generator(seed, key)
    params = [sample_view(image.width, image.height, generator, scale, ratio, hflip) for _ in range(views)]
    pixels = [apply_view(image, view, {"teacher": spec})["teacher"] for view in params]
    return torch.tensor(params, dtype=torch.int32), torch.stack(pixels)


class _RenderedItems(IterableDataset):
    """The units' samples, decoded and rendered, in unit order, with an ``end`` marker after each unit.

    Worker ``w`` of ``W`` handles positions ``w, w + W, ...`` of that sequence (markers included);
    DataLoader returns workers' items round-robin, which restores the sequence's order exactly.
    """

    def __init__(self, dataset, units: list[Unit], render: dict):
        self.dataset, self.units, self.render = dataset, units, render

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        position = 0
        for unit in self.units:
            for item in [*raw_items(self.dataset, unit), None]:  # None: the unit's end marker
                if position % workers == worker:
                    yield self._item(unit.number, item)
                position += 1

    def _item(self, unit: int, item) -> dict:
        if item is None:
            return {"unit": unit, "end": True}
        try:
            sample = decode_item(self.dataset, item)
        except BadSample as bad:
            return {"unit": unit, "bad": bad.kind}
        params, pixels = render_views(sample["image"], sample["key"], **self.render)
        return {"unit": unit, "key": sample["key"], "index": sample["index"], "caption": sample["caption"],
                "view": params, "pixels": pixels}


def _as_is(item):
    return item


class _UnitBuffer:
    """One unit's rows as the teacher embeds them, batch by batch; becomes one shard file."""

    def __init__(self, teacher, batch_size: int, dtype: torch.dtype):
        self.teacher, self.batch_size, self.dtype = teacher, batch_size, dtype
        self.pending: list[dict] = []
        self.parts: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "view": [], "index": []}
        self.keys: list[str] = []
        self.skipped: Counter = Counter()

    def add(self, item: dict) -> None:
        if "bad" in item:
            self.skipped[item["bad"]] += 1
            return
        self.pending.append(item)
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        items, self.pending = self.pending, []
        pixels = torch.stack([i["pixels"] for i in items])  # (b, V, 3, S, S)
        image = self.teacher.encode_image(pixels.flatten(0, 1)).reshape(len(items), pixels.shape[1], -1)
        text = self.teacher.encode_text(self.teacher.tokenizer([i["caption"] for i in items]))
        self.parts["image"].append(image.cpu().to(self.dtype))
        self.parts["text"].append(text.cpu().to(self.dtype))
        self.parts["view"].append(torch.stack([i["view"] for i in items]))
        self.parts["index"].append(torch.tensor([i["index"] for i in items], dtype=torch.int64))
        self.keys += [i["key"] for i in items]

    def tensors(self, dim: int, views: int) -> dict[str, torch.Tensor]:
        self.flush()
        empty = {"image": torch.zeros(0, views, dim, dtype=self.dtype), "text": torch.zeros(0, dim, dtype=self.dtype),
                 "view": torch.zeros(0, views, 5, dtype=torch.int32), "index": torch.zeros(0, dtype=torch.int64)}
        return {name: torch.cat(parts) if parts else empty[name] for name, parts in self.parts.items()}


def write_shards(dataset, teacher, out_dir: str | Path, units: list[Unit], *, views: int, scale, ratio, hflip: bool,
                 seed: int, dtype: str, storage: str, batch_size: int, workers: int = 0,
                 progress: bool = True) -> list[int]:
    """Write the shard file of every unit in ``units`` that is not on disk yet; returns the units written.

    ``teacher`` is a :class:`~clipdistill.models.Teacher` (its own image spec and tokenizer are used).
    """
    out_dir = Path(out_dir)
    todo = [u for u in units if not shard_path(out_dir, u.number, storage).exists()]
    for unit in todo:  # leftovers of a killed run: temporary files never become shards
        for stale in out_dir.glob(f".{shard_path(out_dir, unit.number, storage).name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if len(todo) < len(units):
        log.info("resuming: %d of %d shards of this rank already written", len(units) - len(todo), len(units))
    render = dict(views=views, spec=teacher.image_spec, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                  seed=seed)
    items = DataLoader(_RenderedItems(dataset, todo, render), batch_size=None, collate_fn=_as_is,
                       num_workers=workers)
    sizes = [u.size_hint for u in todo]
    bar = tqdm(total=sum(sizes) if None not in sizes else None, desc="cache", unit="sample", dynamic_ncols=True,
               disable=not progress)
    buffer, written = _UnitBuffer(teacher, batch_size, DTYPES[dtype]), []
    for item in items:
        if item.get("end"):
            meta = {"keys": buffer.keys, "skipped": dict(buffer.skipped)}
            write_shard(shard_path(out_dir, item["unit"], storage),
                        buffer.tensors(teacher.embed_dim, views), meta, storage)
            written.append(item["unit"])
            buffer = _UnitBuffer(teacher, batch_size, DTYPES[dtype])
            continue
        buffer.add(item)
        bar.update(1)
    bar.close()
    return written


def missing_shards(out_dir: str | Path, num_shards: int, storage: str) -> list[int]:
    return [n for n in range(num_shards) if not shard_path(out_dir, n, storage).exists()]


def finalize(out_dir: str | Path) -> dict:
    """Index every shard's keys and complete the manifest (count, skipped samples). Idempotent."""
    out_dir = Path(out_dir)
    manifest = manifest_lib.read_manifest(out_dir)
    metas = [read_meta(shard_path(out_dir, n, manifest["storage"])) for n in range(manifest["num_shards"])]
    count = write_index(out_dir, [m["keys"] for m in metas])
    skipped = sum((Counter(m["skipped"]) for m in metas), Counter())
    manifest.update(count=count, skipped=dict(skipped), complete=True)
    manifest_lib.write_manifest(out_dir, manifest)
    return manifest


def open_manifest(out_dir: str | Path, settings: dict) -> None:
    """Start a cache in ``out_dir``, or check that the cache already there was started with ``settings``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / manifest_lib.MANIFEST).exists():
        manifest_lib.refuse_if_different(manifest_lib.read_manifest(out_dir), manifest_lib.settings(settings),
                                         out_dir, "this command (resume with the same config, or use a new --out)")
        return
    manifest_lib.write_manifest(out_dir, settings)


def write_cache(dataset, teacher, out_dir: str | Path, *, dataset_info: dict, views: int = 1, scale=(0.9, 1.0),
                ratio=(3 / 4, 4 / 3), hflip: bool = False, seed: int = 0, dtype: str = "fp16",
                storage: str = "safetensors", shard_size: int = 10000, batch_size: int = 256, workers: int = 0,
                rank: int = 0, world_size: int = 1, progress: bool = True, finalize_when_done: bool = True):
    """Write this rank's shards of the cache of ``dataset`` embedded by ``teacher``.

    Returns the completed manifest when the cache is complete after this call (and
    ``finalize_when_done``), else None (other ranks still have shards to write).
    """
    check_encoding(storage, dtype)
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    units = plan_units(dataset, shard_size)
    augmentation = {"views": views, "scale": list(scale), "ratio": list(ratio), "hflip": hflip, "seed": seed}
    settings = manifest_lib.build_manifest(
        teacher=teacher, fingerprint=manifest_lib.weights_fingerprint(teacher), augmentation=augmentation,
        dataset=dataset_info, dtype=dtype, storage=storage, shard_size=shard_size, num_shards=len(units))
    open_manifest(out_dir, settings)
    write_shards(dataset, teacher, out_dir, units_of_rank(units, rank, world_size), views=views, scale=scale,
                 ratio=ratio, hflip=hflip, seed=seed, dtype=dtype, storage=storage, batch_size=batch_size,
                 workers=workers, progress=progress)
    if finalize_when_done and not missing_shards(out_dir, len(units), storage):
        return finalize(out_dir)
    return None
