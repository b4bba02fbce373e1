"""Private memory of a process that opens a large teacher cache and reads one training batch from it.

    python bench/cache_memory.py --rows 2000000

Writes a cache by hand (no teacher: random fp16 embeddings, D = 512, 1 view, 12-character keys as
CSV input has, shards of 100 000 rows), then, in a fresh process, opens it, looks up a batch of 256
keys and gathers their views and embeddings, as a DataLoader worker and the training process do.
Prints one JSON line: RssAnon (private: what each torchrun rank and each spawned worker pays again)
and RssFile (mapped file pages: the page cache's, one copy for all processes) after each stage.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from clipdistill.cache.index import write_index
from clipdistill.cache.manifest import FORMAT, FORMAT_VERSION, write_manifest
from clipdistill.cache.storage import shard_path, write_shard

DIM, SHARD = 512, 100_000


def write_cache(directory: Path, rows: int) -> None:
    keys = []
    for number, start in enumerate(range(0, rows, SHARD)):
        size = min(SHARD, rows - start)
        shard_keys = [f"row{i:09d}" for i in range(start, start + size)]
        tensors = {"image": torch.randn(size, 1, DIM).half(), "text": torch.randn(size, DIM).half(),
                   "view": torch.zeros(size, 1, 5, dtype=torch.int32), "index": torch.arange(start, start + size),
                   "image_row": torch.arange(size)}  # format 2: one image per row here
        write_shard(shard_path(directory, number, "safetensors"), tensors, {"keys": shard_keys}, "safetensors")
        keys.append(shard_keys)
    count = write_index(directory, keys)
    write_manifest(directory, {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "count": count,
                               "storage": "safetensors", "num_shards": len(keys), "dim": DIM,
                               "augmentation": {"views": 1}, "logit_scale": 100.0, "extras": {}})


MEASURE = """
import json, sys, torch
from clipdistill.cache import TeacherCache

def memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("RssAnon", "RssFile")}

stages = {"imported": memory()}
cache = TeacherCache(sys.argv[1])
stages["opened"] = memory()
rows_total = len(cache)
keys = [f"row{i:09d}" for i in torch.randint(0, rows_total, (256,), generator=torch.Generator().manual_seed(0))]
views = cache.views()
stored = [views.get(key) for key in keys]
rows = cache.rows(keys)
image = cache.image_rows(rows, torch.zeros(len(rows), dtype=torch.long))
stages["one batch"] = memory()
print(json.dumps({"rows": rows_total, "MiB": stages}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--work", help="where to write the cache (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="clipdistill-cache-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "manifest.json").exists():
            write_cache(work, args.rows)
        done = subprocess.run([sys.executable, "-c", MEASURE, str(work)], capture_output=True, text=True)
        print(done.stdout.strip() or done.stderr[-2000:])
        return done.returncode
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
