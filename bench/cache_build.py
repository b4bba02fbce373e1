"""Cache build time and size on a caption file with several rows per image (Flickr8k: 5).

    python bench/cache_build.py --flickr-dir ../shared/data/flickr8k --images 400 --teacher ViT-B-32

Writes a CSV of the first ``--images`` Flickr8k train images x 5 captions (rows ordered by image, as
Flickr lists them), runs ``clipdistill.cache.write_cache`` with a randomly initialized teacher and
prints rows, stored image entries, seconds and bytes per row as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ablation import write_flickr_csv  # noqa: E402

from clipdistill.cache import write_cache  # noqa: E402
from clipdistill.data import CsvPairs  # noqa: E402
from clipdistill.models import load_teacher  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flickr-dir", default="../shared/data/flickr8k")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--teacher", default="ViT-B-32", help="open_clip architecture or preset (random weights)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="clipdistill-cache-build-"))
    try:
        csv = work / "captions.tsv"
        write_flickr_csv(Path(args.flickr_dir), csv, images=args.images)
        torch.manual_seed(0)
        teacher = load_teacher("openclip", model=args.teacher)
        started = time.time()
        manifest = write_cache(CsvPairs(csv), teacher, work / "cache", dataset_info={"kind": "csv", "path": str(csv)},
                               workers=args.workers, batch_size=args.batch, progress=False)
        seconds = time.time() - started
        size = sum(f.stat().st_size for f in (work / "cache").iterdir() if f.is_file())
        print(json.dumps({"rows": manifest["count"], "image_entries": manifest.get("images"),
                          "seconds": round(seconds, 1), "bytes_per_row": round(size / manifest["count"]),
                          "threads": torch.get_num_threads()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
