"""The cache writer against its limit: the teacher's forward alone on the same pre-decoded images.

    python bench/cache_build.py --synthetic 512 --teacher tiny-teacher --workers 1 --rounds 5 --out runs/cb.json
    python bench/cache_build.py --flickr-dir ../shared/data/flickr8k --images 400 --teacher ViT-B-32

Data: ``--synthetic N`` writes N procedural PNG files (``--image-px``) and a CSV, one caption per image;
``--flickr-dir`` takes the first ``--images`` Flickr8k train images x 5 captions (rows ordered by image,
as Flickr lists them). The teacher is an open_clip architecture or preset with random weights.

Each round (paired, order rotated, as in bench/throughput.py) times:

- ``writer``: ``clipdistill.cache.write_cache`` as ``clipdistill cache`` runs it (``--workers`` DataLoader
  workers decode and render; batch ``--batch``), rows per second, into a fresh directory;
- ``limit``: the teacher's ``encode_image`` and ``encode_text`` alone over the same rendered views (the
  writer's own ``render_views``, done before the clock starts) and the same pre-tokenized captions, in
  batches of ``--batch``: the rate the writer would reach if decoding, rendering, tokenizing, moving items
  between processes and writing shards cost nothing.

The JSON gives both rates, the per-round ratio writer/limit, its median (target >= 0.85) and sign-test
interval, and where the writer's time goes, measured inside the writer's own process by wrapping (not
changing) its parts: the teacher's forwards, the tokenizer, shard writing and indexing; the rest is the
training process waiting for rendered items from the workers plus per-item bookkeeping.
``--prefetch K`` reruns the writer as a what-if with the workers' DataLoader ``prefetch_factor`` set to K
(the writer reads items one at a time, ``batch_size=None``, and sets ``prefetch_factor`` to
ceil(batch / workers) itself, ``clipdistill.cache.writer.rendering_prefetch``: a teacher batch in flight).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ablation import write_flickr_csv  # noqa: E402
from throughput import median_interval, rotated, write_csv_dataset  # noqa: E402

from clipdistill.cache import write_cache  # noqa: E402
from clipdistill.cache import writer as writer_module  # noqa: E402
from clipdistill.data import CsvPairs  # noqa: E402
from clipdistill.models import load_teacher  # noqa: E402

TARGET = 0.85


class Stopwatch:
    """Seconds spent inside wrapped callables, by name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed


@contextlib.contextmanager
def instrumented(teacher, watch: Stopwatch, prefetch: int | None):
    """Time the writer's parts without changing them: the teacher's forwards and tokenizer (instance
    attributes), the writer module's shard writing and finalizing; optionally a deeper DataLoader prefetch."""
    saved_module = {name: getattr(writer_module, name) for name in ("write_shard", "finalize", "DataLoader")}
    saved_teacher = {name: teacher.__dict__.get(name) for name in ("encode_image", "encode_text", "tokenizer")}
    teacher.encode_image = watch.wrap("teacher_image_forward", teacher.encode_image)
    teacher.encode_text = watch.wrap("teacher_text_forward", teacher.encode_text)
    teacher.tokenizer = watch.wrap("tokenize", teacher.tokenizer)
    writer_module.write_shard = watch.wrap("write_shards", writer_module.write_shard)
    writer_module.finalize = watch.wrap("index_and_manifest", writer_module.finalize)
    if prefetch:
        def loader(*args, **kwargs):
            if kwargs.get("num_workers"):
                kwargs["prefetch_factor"] = prefetch
            return saved_module["DataLoader"](*args, **kwargs)
        writer_module.DataLoader = loader
    try:
        yield
    finally:
        for name, value in saved_module.items():
            setattr(writer_module, name, value)
        for name, value in saved_teacher.items():
            if value is None:
                teacher.__dict__.pop(name, None)
            else:
                setattr(teacher, name, value)


def run_writer(dataset, teacher, csv: Path, out: Path, batch: int, workers: int, prefetch: int | None = None) -> dict:
    """Rows per second of write_cache, and its time split by part."""
    shutil.rmtree(out, ignore_errors=True)
    watch = Stopwatch()
    with instrumented(teacher, watch, prefetch):
        started = time.perf_counter()
        manifest = write_cache(dataset, teacher, out, dataset_info={"kind": "csv", "path": str(csv)},
                               workers=workers, batch_size=batch, progress=False)
        seconds = time.perf_counter() - started
    parts = dict(watch.seconds)
    parts["waiting_for_items_and_bookkeeping"] = seconds - sum(parts.values())
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"rate": manifest["count"] / seconds, "seconds": seconds, "rows": manifest["count"],
            "image_entries": manifest.get("images"), "bytes_per_row": size / manifest["count"], "parts": parts}


def predecoded(dataset, teacher, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The writer's inputs made ahead of time: rendered teacher views of each distinct image, in batches,
    and the tokenized captions of every row, in batches."""
    render = dict(views=1, spec=teacher.image_spec, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), hflip=False, seed=0)
    pixels, captions, seen = [], [], set()
    for index in range(len(dataset)):
        sample = dataset[index]
        captions.append(sample["caption"])
        image_id = dataset.image_id(index) if hasattr(dataset, "image_id") else sample["key"]
        if image_id in seen:  # the writer embeds an image once for all its caption rows
            continue
        seen.add(image_id)
        pixels.append(writer_module.render_views(sample["image"], sample["key"], **render)[1])
    image_batches = [torch.stack(pixels[i:i + batch]).flatten(0, 1) for i in range(0, len(pixels), batch)]
    text_batches = [teacher.tokenizer(captions[i:i + batch]) for i in range(0, len(captions), batch)]
    return image_batches, text_batches, len(captions)


def run_limit(teacher, image_batches, text_batches, rows: int) -> dict:
    """Rows per second of the teacher's forwards alone (what the writer calls, nothing else)."""
    started = time.perf_counter()
    for images in image_batches:
        teacher.encode_image(images)
    image_seconds = time.perf_counter() - started
    for tokens in text_batches:
        teacher.encode_text(tokens)
    seconds = time.perf_counter() - started
    return {"rate": rows / seconds, "seconds": seconds, "image_seconds": image_seconds,
            "text_seconds": seconds - image_seconds}


def make_csv(args, work: Path) -> Path:
    if args.synthetic:
        return write_csv_dataset(work / "data", args.synthetic, args.image_px)
    csv = work / "captions.tsv"
    write_flickr_csv(Path(args.flickr_dir), csv, images=args.images)
    return csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--synthetic", type=int, default=0, help="N procedural PNG images, one caption each")
    data.add_argument("--flickr-dir", default="../shared/data/flickr8k")
    parser.add_argument("--images", type=int, default=400, help="Flickr8k train images (5 captions each)")
    parser.add_argument("--image-px", type=int, default=256, help="side of the synthetic PNG files")
    parser.add_argument("--teacher", default="ViT-B-32", help="open_clip architecture or preset (random weights)")
    parser.add_argument("--precision", default="auto", help="teacher precision: auto | fp32 | bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (writer, limit, order rotated)")
    parser.add_argument("--prefetch", type=int, default=0, help="also time the writer with this DataLoader "
                        "prefetch_factor (a what-if; needs --workers >= 1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", help="JSON file for the figures (also printed)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or args.workers < 0 or args.prefetch < 0:
        parser.error("--rounds and --batch must be at least 1, --workers and --prefetch at least 0")
    if args.prefetch and not args.workers:
        parser.error("--prefetch needs --workers >= 1 (prefetching is done by workers)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="clipdistill-cache-build-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


def measure(args, work: Path) -> dict:
    csv = make_csv(args, work)
    dataset = CsvPairs(csv)
    torch.manual_seed(0)
    teacher = load_teacher("openclip", model=args.teacher, device=args.device, precision=args.precision)
    image_batches, text_batches, rows = predecoded(dataset, teacher, args.batch)
    runs = {"writer": lambda: run_writer(dataset, teacher, csv, work / "cache", args.batch, args.workers),
            "limit": lambda: run_limit(teacher, image_batches, text_batches, rows)}
    if args.prefetch:
        runs["writer_prefetch"] = lambda: run_writer(dataset, teacher, csv, work / "cache", args.batch, args.workers,
                                                     prefetch=args.prefetch)
    runs["limit"]()  # warm-up: first-call allocations and kernel selection are not the limit
    figures = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name in rotated(list(runs), round_):
            figures[name].append(runs[name]())
            print(f"round {round_ + 1}/{args.rounds} {name:<16} {figures[name][-1]['rate']:8.1f} rows/s",
                  file=sys.stderr, flush=True)
    return summarize(figures, args, rows)


def summarize(figures: dict, args, rows: int) -> dict:
    rates = {name: [f["rate"] for f in values] for name, values in figures.items()}
    result = {"rows_per_s": {name: statistics.median(v) for name, v in rates.items()}, "per_round": rates,
              "rows": rows, "image_entries": figures["writer"][0]["image_entries"],
              "bytes_per_row": figures["writer"][0]["bytes_per_row"], "ratios": {}, "ratio_intervals": {}}
    for name in [n for n in figures if n.startswith("writer")]:
        per_round = [w / limit for w, limit in zip(rates[name], rates["limit"])]
        result["ratios"][f"{name}/limit"] = statistics.median(per_round)
        result["ratio_intervals"][f"{name}/limit"] = {**median_interval(per_round), "per_round": per_round}
        # Where the time goes: each part's median share of the writer's seconds.
        result[f"{name}_time_shares"] = {part: statistics.median(f["parts"][part] / f["seconds"] for f in figures[name])
                                         for part in figures[name][0]["parts"]}
    result["limit_seconds"] = {k: statistics.median(f[k] for f in figures["limit"])
                               for k in ("image_seconds", "text_seconds")}
    result["target"] = {"writer/limit": TARGET, "met": result["ratios"]["writer/limit"] >= TARGET}
    result["settings"] = {k: v for k, v in vars(args).items()} | {"threads": torch.get_num_threads(),
                                                                 "cpus": os.cpu_count(),
                                                                 "load_average_1min": os.getloadavg()[0]}
    return result


if __name__ == "__main__":
    sys.exit(main())
