"""Speed and peak memory of ``clipdistill curate`` on N × 512 float32 embeddings (2 CPU cores).

    python bench/curate.py --sizes 100000,1000000 --out runs/bench-curate

Embeddings are synthetic but shaped like the real thing: 5 000 topic centres, rows scattered around
them, and 30 % of rows near-copies of another row. Each size is written to a ``.npy`` file, then
curated by the CLI in a fresh process (``--target-removal 0.437``, default clusters), so the peak
resident memory of that process (``ru_maxrss`` of the child) is the command's own, file loading
included. Prints a table and the growth exponent log(t_max / t_min) / log(N_max / N_min);
writes ``DIR/curate_bench.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, CENTRES, COPY_FRACTION, BLOCK = 512, 5000, 0.3, 100_000


def write_embeddings(path: Path, n: int, seed: int = 0) -> None:
    """N clustered rows with planted near-copies, written block by block (never two copies in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        block = centres[rng.integers(0, CENTRES, m)] + 0.8 * rng.standard_normal((m, DIM), dtype=np.float32)
        copies = np.flatnonzero(rng.random(m) < COPY_FRACTION)
        sources = rng.integers(0, m, len(copies))
        block[copies] = block[sources] + 0.02 * rng.standard_normal((len(copies), DIM), dtype=np.float32)
        out[start:start + m] = block
    out.flush()
    del out


def curate_in_child(embeddings: Path, out: Path, threads: int) -> dict:
    """Run the CLI in a fresh process; wall time and that process's peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.time()
    subprocess.run([sys.executable, "-m", "clipdistill.cli", "curate", "--embeddings", str(embeddings),
                    "--out", str(out), "--target-removal", "0.437", "--no-progress"], check=True, env=env)
    seconds = time.time() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(seconds, 1), "peak_gb": round(max(peak_kb, before) / 2**20, 2),
            "removal": round(report["removal"], 4), "clusters": report["clusters"], "timings": report["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", default="runs/bench-curate")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    # Ascending sizes: ru_maxrss of children is a running maximum, so each child's peak is read correctly.
    for n in sorted(int(s) for s in args.sizes.split(",")):
        path = out / f"emb_{n}.npy"
        write_embeddings(path, n)
        rows[n] = curate_in_child(path, out / f"curated_{n}", args.threads)
        path.unlink()
        print(f"N={n:>9,}  {rows[n]['seconds']:7.1f} s  peak {rows[n]['peak_gb']:.2f} GB  "
              f"removal {rows[n]['removal']:.3f}  clusters {rows[n]['clusters']}  {rows[n]['timings']}", flush=True)
    sizes = sorted(rows)
    if len(sizes) > 1:
        exponent = math.log(rows[sizes[-1]]["seconds"] / rows[sizes[0]]["seconds"]) / math.log(sizes[-1] / sizes[0])
        print(f"time grows as N^{exponent:.2f} from {sizes[0]:,} to {sizes[-1]:,}")
        rows["exponent"] = round(exponent, 3)
    (out / "curate_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
