"""Ranks for ``clipdistill curate`` under torchrun: who am I, how many are we, and a barrier.

Curation needs no collective but a barrier (the data goes through the shared work directory), so
ranks meet over gloo, CPU only, with a timeout long enough for rank 0's k-means and assignment at
LAION scale. torch is imported only when there is more than one rank.
"""
from __future__ import annotations

import contextlib
import datetime
import os

# Rank 0 streams every row past the centroids while the others wait: hours at LAION scale.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@contextlib.contextmanager
def ranks():
    """``(rank, world, barrier)``; ``(0, 1, None)`` outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1, None
        return
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield dist.get_rank(), dist.get_world_size(), dist.barrier
    finally:
        if started:
            dist.destroy_process_group()
