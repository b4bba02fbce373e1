"""Speed, peak memory and recall of ``clipdistill curate`` (2 CPU cores).

    python bench/curate.py scale --sizes 1000000 --dim 512 --out runs/bench-curate             # 1 M × 512 fp32
    python bench/curate.py scale --sizes 1000000,4000000 --dim 256 --dtype float16 --out runs/bench-curate
    python bench/curate.py planted --margins 0,0.01,0.02,0.05 --out runs/bench-curate          # 17.3

``scale``: synthetic embeddings shaped like the real thing (5 000 topic centres, rows scattered around
them, 30 % near-copies of another row), written block by block to a ``.npy``, then curated by the CLI
in a fresh process (``--target-removal 0.437``, default clusters) under ``/usr/bin/time -v``: wall time
and that process's peak resident memory (``Maximum resident set size``), file reading included.
Prints per-row costs (the LAION plan in docs/clip_cid.md is computed from them) and the ratios between
the largest and the smallest size.

``planted``: 100 000 random 256-d unit vectors, 10 000 groups of 5 noisy copies of a hidden centre
(pairwise cosine ≈ 0.99) among 50 000 singletons, curated at target removal 0.4 with each probe margin
(0: no multi-probe): the fraction of groups reduced to exactly one member, of singletons kept, of rows
probed, and the time. Writes ``DIR/curate_bench_<kind>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CENTRES, COPY_FRACTION, BLOCK = 5000, 0.3, 100_000


def write_embeddings(path: Path, n: int, dim: int, dtype: str, seed: int = 0) -> None:
    """N clustered rows with planted near-copies, written block by block (never two copies in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, dim))
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        block = centres[rng.integers(0, CENTRES, m)] + 0.8 * rng.standard_normal((m, dim), dtype=np.float32)
        copies = np.flatnonzero(rng.random(m) < COPY_FRACTION)
        sources = rng.integers(0, m, len(copies))
        block[copies] = block[sources] + 0.02 * rng.standard_normal((len(copies), dim), dtype=np.float32)
        out[start:start + m] = block
    out.flush()
    del out


def curate_in_child(embeddings: Path, out: Path, threads: int, options: list[str]) -> dict:
    """Run the CLI in a fresh process under /usr/bin/time -v; wall time and its peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "clipdistill.cli", "curate", "--embeddings",
               str(embeddings), "--out", str(out), "--no-progress", *options]
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(seconds, 1), "peak_mb": round(peak_kb / 1024), "removal": round(report["removal"], 4),
            "clusters": report["clusters"], "probed": report.get("probed"),
            "timings": report["timings"], "peak_mb_after": report.get("peak_mb_after")}


def scale(args) -> dict:
    rows = {}
    for n in sorted(int(s) for s in args.sizes.split(",")):
        path = Path(args.out) / f"emb_{n}_{args.dim}_{args.dtype}.npy"
        write_embeddings(path, n, args.dim, args.dtype)
        options = ["--target-removal", "0.437", "--workers", str(args.workers)]
        rows[n] = curate_in_child(path, Path(args.out) / f"curated_{n}", args.threads, options)
        rows[n]["us_per_row"] = round(1e6 * rows[n]["seconds"] / n, 2)
        path.unlink()
        print(f"N={n:>9,} × {args.dim} {args.dtype}: {rows[n]['seconds']:7.1f} s  peak {rows[n]['peak_mb']} MB  "
              f"removal {rows[n]['removal']:.3f}  clusters {rows[n]['clusters']}  probed {rows[n]['probed']}  "
              f"{rows[n]['timings']}", flush=True)
    sizes = sorted(rows)
    if len(sizes) > 1:
        small, large = rows[sizes[0]], rows[sizes[-1]]
        rows["ratios"] = {"rows": sizes[-1] / sizes[0], "time": round(large["seconds"] / small["seconds"], 2),
                          "peak_memory": round(large["peak_mb"] / small["peak_mb"], 2)}
        print(f"{sizes[-1]:,} vs {sizes[0]:,}: time × {rows['ratios']['time']}, peak memory × "
              f"{rows['ratios']['peak_memory']}")
    return rows


def planted_set(n=100_000, dim=256, groups=10_000, size=5, noise=0.1, seed=0):
    """Unit rows and a group id per row (-1: singleton); copies' pairwise cosine ≈ 1 / (1 + noise²)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    copies = np.repeat(centres, size, 0) + noise * rng.standard_normal((groups * size, dim),
                                                                        dtype=np.float32) / np.sqrt(dim)
    x = np.concatenate([copies, rng.standard_normal((n - groups * size, dim)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    group = np.r_[np.repeat(np.arange(groups), size), np.full(n - groups * size, -1)]
    order = rng.permutation(n)
    return x[order], group[order]


def planted(args) -> dict:
    x, group = planted_set()
    path = Path(args.out) / "planted.npy"
    np.save(path, x)
    rows = {}
    for margin in (float(m) for m in args.margins.split(",")):
        out = Path(args.out) / f"planted_{margin}"
        rows[margin] = curate_in_child(path, out, args.threads, ["--target-removal", "0.4", "--probe-margin",
                                                                 str(margin)])
        kept = np.zeros(len(x), dtype=bool)
        kept[np.load(out / "keep.npy")] = True
        per_group = np.bincount(group[kept & (group >= 0)], minlength=group.max() + 1)
        rows[margin].update(groups_to_one=round(float(np.mean(per_group == 1)), 4),
                            singletons_kept=round(float(kept[group < 0].mean()), 4))
        print(f"margin {margin}: groups reduced to one {rows[margin]['groups_to_one']:.4f}, singletons kept "
              f"{rows[margin]['singletons_kept']:.4f}, rows probed {rows[margin]['probed']}, "
              f"{rows[margin]['seconds']} s {rows[margin]['timings']}", flush=True)
    path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("scale", "planted"))
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--margins", default="0,0.01,0.02,0.05")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-curate")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = scale(args) if args.kind == "scale" else planted(args)
    name = f"curate_bench_{args.kind}" + (f"_{args.dim}_{args.dtype}" if args.kind == "scale" else "")
    (Path(args.out) / f"{name}.json").write_text(json.dumps({"load_average": os.getloadavg(), **rows}, indent=2))


if __name__ == "__main__":
    main()
