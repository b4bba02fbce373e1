"""cid_cluster's class centres sharded across W CPU gloo ranks (PartialFC): per-rank centre memory.

    python bench/sharded_centres.py [--classes 1000000] [--dim 512] [--ranks 8] [--batch 4] [--steps 3]
                                    [--fraction 1.0] [--labels nearest|data] [--out FILE.json]

Writes K random unit centres (float32 ``.npy``), then W processes each build a toy student (two linear
towers into D) with ``cid_cluster`` (learnable centres, labels = nearest centre across the shards),
wrap it in DDP and take ``--steps`` training steps (``train_step``: AdamW, gradient clipping) on
``--batch`` random pairs per rank (``--labels data``: random labels given with the teacher's embeddings,
``label_tower=data``, so no fixed label copy of the shard is kept). Each rank reports the bytes its
centres hold: the shard (parameter), its gradient, AdamW's moments, the fixed label centres' shard,
against the same tensors for all K rows (what every rank held before sharding), plus its peak resident
memory and the step times. While the ranks run, the parent watches the machine's available memory and
stops them below ``--min-available-gb`` (one line, exit status 1), so the benchmark cannot push a shared
machine out of memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

D_IN = 16


class LinearStudent(nn.Module):
    """Just enough of an open_clip model: two linear towers and a logit scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.visual, self.textual = nn.Linear(D_IN, dim), nn.Linear(D_IN, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))

    def encode_image(self, x, normalize=False):
        return self.visual(x)

    def encode_text(self, x, normalize=False):
        return self.textual(x)


def write_centres(path: Path, classes: int, dim: int, chunk: int = 65_536) -> None:
    """Random unit rows, written in chunks (the whole array is never in memory)."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(classes, dim))
    rng = np.random.default_rng(0)
    for start in range(0, classes, chunk):
        block = rng.standard_normal((min(chunk, classes - start), dim), dtype=np.float32)
        rows[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows.flush()
    del rows


def _bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _worker(rank: int, world: int, init: str, centres: str, batch: int, steps: int, fraction: float,
            labels: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from clipdistill import Embeddings
    from clipdistill.losses.objective import build_objective
    from clipdistill.train.optim import build_optimizer
    from clipdistill.train.step import Distiller, train_step

    classes, dim = np.load(centres, mmap_mode="r").shape
    torch.manual_seed(0)
    spec = {"centroids": centres, "learnable": True, "sample_fraction": fraction,
            "label_tower": "data" if labels == "data" else "image"}
    objective = build_objective({"cid_cluster": spec}, student_dim=dim, teacher_dim=dim)
    model = DistributedDataParallel(Distiller(LinearStudent(dim), objective), find_unused_parameters=True)
    optimizer = build_optimizer(model.module, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(1000 + rank)
    times, losses = [], []
    for step in range(steps):
        batch_in = {"student_image": torch.randn(batch, D_IN, generator=g),
                    "student_text": torch.randn(batch, D_IN, generator=g)}
        teacher = Embeddings(F.normalize(torch.randn(batch, dim, generator=g), dim=-1),
                             F.normalize(torch.randn(batch, dim, generator=g), dim=-1), torch.tensor(50.0),
                             normalized=True)
        if labels == "data":
            teacher = teacher.with_(extras={"cluster": torch.randint(0, classes, (batch,), generator=g)})
        started = time.perf_counter()
        loss, _ = train_step(model, batch_in, teacher, optimizer=optimizer, lr=1e-3, device=torch.device("cpu"),
                             precision="fp32", grad_clip=1.0, step=step + 1)
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    loss_module = objective.terms["cid_cluster"]
    shard, label_shard = loss_module.centroids, loss_module.label_centroids
    moments = [v for v in optimizer.state[shard].values() if torch.is_tensor(v) and v.numel() > 1]
    held = {"shard": _bytes(shard), "grad": _bytes(shard.grad), "optimizer": _bytes(*moments),
            "label_shard": _bytes(label_shard)}
    rows = len(shard)
    report = {"rank": rank, "rows": rows, "bytes": held, "total_bytes": sum(held.values()),
              "whole_bytes": sum(held.values()) * loss_module.num_classes // rows,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "step_seconds": times, "losses": losses}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run(classes: int, dim: int, ranks: int, batch: int, steps: int, fraction: float, labels: str,
        min_available_gb: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        centres = Path(tmp) / "centres.npy"
        started = time.perf_counter()
        write_centres(centres, classes, dim)
        written = time.perf_counter() - started
        arguments = (ranks, str(Path(tmp) / "pg"), str(centres), batch, steps, fraction, labels, tmp)
        context = mp.spawn(_worker, args=arguments, nprocs=ranks, join=False)
        lowest = _available_gb()
        while not context.join(timeout=0.5):
            lowest = min(lowest, _available_gb())
            if lowest < min_available_gb:
                for process in context.processes:
                    process.kill()
                raise SystemExit(f"stopped: the machine's available memory fell to {lowest:.1f} GB "
                                 f"(< --min-available-gb {min_available_gb})")
        reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(ranks)]
    whole = reports[0]["whole_bytes"]
    return {"classes": classes, "dim": dim, "ranks": ranks, "batch_per_rank": batch, "steps": steps,
            "sample_fraction": fraction, "labels": labels, "write_centres_seconds": written,
            "lowest_available_gb": lowest,
            "whole_bytes_per_rank_before_sharding": whole,
            "largest_rank_bytes": max(r["total_bytes"] for r in reports),
            "largest_rank_share": max(r["total_bytes"] for r in reports) / whole,
            "losses_equal_on_every_rank": all(r["losses"] == reports[0]["losses"] for r in reports),
            "ranks_report": reports}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="pairs per rank and step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=1.0, help="cid_cluster sample_fraction")
    parser.add_argument("--labels", choices=["nearest", "data"], default="nearest",
                        help="nearest centre across the shards (a fixed label copy of each shard), "
                             "or given by the data")
    parser.add_argument("--min-available-gb", type=float, default=1.5)
    parser.add_argument("--out", help="write the report here (JSON) as well")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run(args.classes, args.dim, args.ranks, args.batch, args.steps, args.fraction, args.labels,
                 args.min_available_gb)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    mib = 2**20
    print(f"K = {args.classes} x {args.dim} on {args.ranks} ranks: centre memory per rank "
          f"{result['largest_rank_bytes'] / mib:.0f} MiB (largest shard) vs "
          f"{result['whole_bytes_per_rank_before_sharding'] / mib:.0f} MiB "
          f"for all K ({result['largest_rank_share']:.4f}); peak RSS per rank "
          f"{max(r['peak_rss_bytes'] for r in result['ranks_report']) / mib:.0f} MiB; step seconds (rank 0) "
          f"{[round(t, 2) for t in result['ranks_report'][0]['step_seconds']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
