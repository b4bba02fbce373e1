"""Run the teacher once over a dataset and store what every loss needs from it.

For each sample: the teacher's normalized embedding of ``views`` augmented views of the image,
each view's parameters (the ``view`` tuple of :mod:`clipdistill.data.transforms`, so training can
render exactly that crop for the student), and the normalized embedding of its caption. Rows of one
shard that show the same image (a caption file with five rows per image) share one stored image
entry and its views (``image_row``): the image is decoded, rendered and embedded once.

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
from clipdistill.cache.units import Unit, decode_item, plan_units, raw_items, units_of_rank, with_image_ids
from clipdistill.data.bad_samples import BadSample
from clipdistill.data.batch import as_is, sample_generator
from clipdistill.data.transforms import apply_view, sample_view
from clipdistill.models.guards import count_truncated

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
            end = (None, None, False)  # the unit's end marker
            for item, image_id, repeat in [*with_image_ids(self.dataset, raw_items(self.dataset, unit)), end]:
                if position % workers == worker:
                    yield self._item(unit.number, item, image_id, repeat)
                position += 1

    def _item(self, unit: int, item, image_id: str | None, repeat: bool) -> dict:
        if item is None:
            return {"unit": unit, "end": True}
        if repeat:  # the image is embedded already (an earlier row of this unit): the caption is enough
            return {"unit": unit, **self.dataset.text_of(item), "index": item, "image_id": image_id}
        try:
            sample = decode_item(self.dataset, item)
        except BadSample as bad:
            return {"unit": unit, "bad": bad.kind, "image_id": image_id}
        params, pixels = render_views(sample["image"], sample["key"], **self.render)
        return {"unit": unit, "key": sample["key"], "index": sample["index"], "caption": sample["caption"],
                "image_id": image_id, "view": params, "pixels": pixels}


class _UnitBuffer:
    """One unit's rows as the teacher embeds them, batch by batch; becomes one shard file.

    Images and rows are counted apart: ``image`` has one entry per distinct image of the unit,
    ``text``/``view``/``index``/``image_row`` one per row, ``image_row`` pointing into ``image``.
    """

    def __init__(self, teacher, batch_size: int, dtype: torch.dtype):
        self.teacher, self.batch_size, self.dtype = teacher, batch_size, dtype
        self.pending_pixels: list[torch.Tensor] = []
        self.pending_rows: list[dict] = []
        self.parts: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "view": [], "index": [], "image_row": []}
        self.keys: list[str] = []
        self.skipped: Counter = Counter()
        self.image_views: list[torch.Tensor] = []  # each stored image's view parameters (V, 5)
        self.image_row_of: dict[str, int] = {}  # image id -> its entry in ``image``
        self.bad_images: dict[str, str] = {}  # image id -> why its first row was skipped
        self.truncated: int | None = 0  # captions longer than the teacher's context (None: cannot count)

    def add(self, item: dict) -> None:
        image_id = item.get("image_id")
        if "bad" in item:
            self.skipped[item["bad"]] += 1
            if image_id is not None:
                self.bad_images[image_id] = item["bad"]
            return
        if "pixels" in item:
            image_row = len(self.image_views)
            self.image_views.append(item["view"])
            self.pending_pixels.append(item["pixels"])
            if image_id is not None:
                self.image_row_of[image_id] = image_row
        elif image_id in self.bad_images:  # a later row of an unreadable image: skipped alike
            self.skipped[self.bad_images[image_id]] += 1
            return
        else:
            image_row = self.image_row_of[image_id]
        self.pending_rows.append({"key": item["key"], "index": item["index"], "caption": item["caption"],
                                  "image_row": image_row})
        # Images and captions fill their teacher batches apart: with 5 captions per image an image
        # batch would otherwise hold batch_size / 5 images.
        if len(self.pending_pixels) == self.batch_size:
            self.flush_images()
        if len(self.pending_rows) == self.batch_size:
            self.flush_rows()

    def flush_images(self) -> None:
        if self.pending_pixels:
            pixels, self.pending_pixels = torch.stack(self.pending_pixels), []  # (b, V, 3, S, S)
            image = self.teacher.encode_image(pixels.flatten(0, 1)).reshape(len(pixels), pixels.shape[1], -1)
            self.parts["image"].append(image.cpu().to(self.dtype))

    def flush_rows(self) -> None:
        if self.pending_rows:
            rows, self.pending_rows = self.pending_rows, []
            captions = [r["caption"] for r in rows]
            if None in captions:  # caption-free data (an image folder, shards without .txt): (n, 0) text rows
                text = torch.zeros(len(rows), 0)
            else:
                text = self.teacher.encode_text(self.teacher.tokenizer(captions))
                cut = count_truncated(self.teacher.tokenizer, captions)
                self.truncated = None if cut is None or self.truncated is None else self.truncated + cut
            self.parts["text"].append(text.cpu().to(self.dtype))
            image_rows = [r["image_row"] for r in rows]
            self.parts["view"].append(torch.stack([self.image_views[i] for i in image_rows]))
            self.parts["index"].append(torch.tensor([r["index"] for r in rows], dtype=torch.int64))
            self.parts["image_row"].append(torch.tensor(image_rows, dtype=torch.int64))
            self.keys += [r["key"] for r in rows]

    def tensors(self, dim: int, views: int) -> dict[str, torch.Tensor]:
        self.flush_images()
        self.flush_rows()
        empty = {"image": torch.zeros(0, views, dim, dtype=self.dtype), "text": torch.zeros(0, dim, dtype=self.dtype),
                 "view": torch.zeros(0, views, 5, dtype=torch.int32), "index": torch.zeros(0, dtype=torch.int64),
                 "image_row": torch.zeros(0, dtype=torch.int64)}
        return {name: torch.cat(parts) if parts else empty[name] for name, parts in self.parts.items()}


def rendering_prefetch(batch_size: int, workers: int) -> dict:
    """DataLoader options that keep a whole teacher batch of rendered items in flight across the workers.

    Items come one at a time (``batch_size=None``); with torch's default ``prefetch_factor=2`` each worker
    renders only 2 ahead while the teacher embeds a batch, so every batch began with the workers ~batch
    items behind (bench/cache_build.py: 6 % of the writer's time waiting on CPU, the bottleneck on a GPU).
    Memory: about one batch of rendered views.
    """
    return {"prefetch_factor": max(2, -(-batch_size // workers))} if workers > 0 else {}


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
    items = DataLoader(_RenderedItems(dataset, todo, render), batch_size=None, collate_fn=as_is,
                       num_workers=workers, **rendering_prefetch(batch_size, workers))
    sizes = [u.size_hint for u in todo]
    bar = tqdm(total=sum(sizes) if None not in sizes else None, desc="cache", unit="sample", dynamic_ncols=True,
               disable=not progress)
    buffer, written = _UnitBuffer(teacher, batch_size, DTYPES[dtype]), []
    for item in items:
        if item.get("end"):
            tensors = buffer.tensors(teacher.embed_dim, views)
            meta = {"keys": buffer.keys, "skipped": dict(buffer.skipped), "images": len(tensors["image"]),
                    "truncated_captions": buffer.truncated}
            write_shard(shard_path(out_dir, item["unit"], storage), tensors, meta, storage)
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
    truncated = [m.get("truncated_captions") for m in metas]  # absent (None) in shards of older code
    manifest.update(count=count, images=sum(m["images"] for m in metas), skipped=dict(skipped), complete=True,
                    truncated_captions=None if None in truncated else sum(truncated))
    if manifest["truncated_captions"]:
        log.warning("%d of %d captions are longer than the teacher's context (%s tokens) and were cut for the teacher",
                    manifest["truncated_captions"], count, manifest.get("context_length"))
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
        dataset=dataset_info, dtype=dtype, storage=storage, shard_size=shard_size, num_shards=len(units),
        has_captions=getattr(dataset, "has_captions", True))
    open_manifest(out_dir, settings)
    write_shards(dataset, teacher, out_dir, units_of_rank(units, rank, world_size), views=views, scale=scale,
                 ratio=ratio, hflip=hflip, seed=seed, dtype=dtype, storage=storage, batch_size=batch_size,
                 workers=workers, progress=progress)
    if finalize_when_done and not missing_shards(out_dir, len(units), storage):
        return finalize(out_dir)
    return None
