"""Peak memory of the distillation loss step, global vs local_loss mode, on 2 gloo ranks.

    python bench/loss_memory.py [--batches 1024,2048,4096,8192,16384] [--dim 512] [--out FILE.json]

For each global batch N, two CPU processes each hold N/2 student and teacher embeddings, run the
CLIP-KD objective (clip + crd + fd + icl: every contrastive term builds N-wide logits) forward and
backward, and report the growth of their peak resident memory over the set-up. In the global mode
every rank builds N x N logits; with ``local_loss`` it builds (N/2) x N, so memory grows linearly in
N per rank instead of quadratically. Each configuration runs in fresh processes (peak RSS only grows).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipdistill import Embeddings, build
from clipdistill import config as config_lib
from clipdistill.losses.objective import build_objective

RECIPE = {"clip": {"weight": 1.0}, "crd": {"weight": 1.0}, "fd": {"weight": 3.9}, "icl": {"weight": 1.0}}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _worker(rank: int, world: int, init: str, batch: int, dim: int, local: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    n = batch // world
    g = torch.Generator().manual_seed(rank)
    student = Embeddings(torch.randn(n, dim, generator=g).requires_grad_(), torch.randn(n, dim, generator=g),
                         torch.tensor(14.0))
    teacher = Embeddings(F.normalize(torch.randn(n, dim, generator=g), dim=-1),
                         F.normalize(torch.randn(n, dim, generator=g), dim=-1), torch.tensor(100.0), normalized=True)
    # Through the config, as a training run builds it: train.local_loss decides, world size 2.
    cfg = config_lib.from_dict({"losses": RECIPE, "train": {"local_loss": local}})
    objective = build_objective(cfg.losses, student_dim=dim, teacher_dim=dim,
                                local_loss=build.local_loss_from(cfg.train, world))
    dist.barrier()
    before = _peak_mib()
    total, _ = objective(student, teacher)
    total.backward()
    growth = _peak_mib() - before
    grown = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(grown, torch.tensor([growth], dtype=torch.float64))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(max(float(x) for x in grown), f)
    dist.destroy_process_group()


def measure(batch: int, dim: int, local: bool) -> float | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peak.json")
        try:
            mp.spawn(_worker, args=(2, os.path.join(tmp, "pg"), batch, dim, local, out), nprocs=2, join=True)
        except Exception:  # noqa: BLE001 - an out-of-memory kill is a result to report, not a crash
            return None
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1024,2048,4096,8192,16384")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows = []
    print(f"{'global batch':>12} | {'global MiB/rank':>15} | {'local_loss MiB/rank':>19} | ratio")
    for batch in (int(b) for b in args.batches.split(",")):
        global_mib, local_mib = measure(batch, args.dim, False), measure(batch, args.dim, True)
        ratio = f"{global_mib / local_mib:.2f}" if global_mib and local_mib else "-"
        fmt = lambda v: f"{v:.0f}" if v is not None else "failed"  # noqa: E731
        print(f"{batch:>12} | {fmt(global_mib):>15} | {fmt(local_mib):>19} | {ratio}")
        rows.append({"global_batch": batch, "global_mib": global_mib, "local_mib": local_mib})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"dim": args.dim, "ranks": 2, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
