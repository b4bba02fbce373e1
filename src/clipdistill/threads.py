"""How many CPU threads a process computes with, and how many DataLoader workers feed it.

torch starts one intra-op thread per core whatever else runs. Next to DataLoader workers (each a
busy process) or other jobs on a shared machine, OpenMP threads then wait on each other: a 10-step
run on a 2-core machine with other work went from 171 to 6.3 samples/s. So every command that
computes (train, cache, eval) splits the cores this process may use between its threads and the
workers ``data.workers: auto`` would start, unless the user decided: ``OMP_NUM_THREADS`` in the
environment or an explicit setting. The split depends on the machine only, not on the workers a run
asks for, so that a run's result does not depend on ``data.workers``.
"""
from __future__ import annotations

import os

import torch

MAX_AUTO_WORKERS = 8


def usable_cores(processes_per_node: int = 1) -> int:
    """The cores this process may use: its CPU affinity (a container's or ``taskset``'s limit), shared
    evenly among the processes torchrun starts on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes_per_node))


def dataloader_workers(setting: int | str, processes_per_node: int = 1, gpu: bool = False) -> int:
    """``data.workers``: a number as given; ``auto``: with a GPU, every core but one (the model runs on the
    GPU, the cores decode and crop), at most 8; on a CPU, a quarter of the cores (the model's step needs
    them: on 2 cores a worker costs the demo's teacher a third of its speed), so none below 4 cores."""
    if setting != "auto":
        return int(setting)
    cores = usable_cores(processes_per_node)
    if gpu:
        return max(1, min(MAX_AUTO_WORKERS, cores - 1))
    return min(MAX_AUTO_WORKERS, cores // 4)


def configure_threads(requested: int, processes_per_node: int = 1, gpu: bool = False) -> tuple[int, str]:
    """Set torch's intra-op threads; returns ``(threads, why)`` for the start banner.

    ``requested`` > 0 wins; else ``OMP_NUM_THREADS``, if set, is left to torch; else the usable cores
    less what ``data.workers: auto`` would give the workers, at least 1. A function of the machine only,
    never of the workers a run asks for: the thread count changes floating-point sums, and a run's
    result must not depend on ``data.workers``.
    """
    if requested > 0:
        torch.set_num_threads(requested)
        return requested, "as set"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "from OMP_NUM_THREADS"
    cores, reserved = usable_cores(processes_per_node), dataloader_workers("auto", processes_per_node, gpu)
    threads = max(1, cores - reserved)
    torch.set_num_threads(threads)
    return threads, f"{cores} cores less {reserved} for DataLoader workers"


def oversubscription(threads: int, workers: int, processes_per_node: int = 1, gpu: bool = False) -> str | None:
    """A warning line when CPU training's compute threads and its DataLoader workers (each a busy process) want
    more cores than this process may use, else None. On a GPU the threads mostly wait: no warning.

    OpenMP threads that lose their core to a worker wait for each other: a tiny student on 2 cores with 1 worker
    took 101 ms a step with 2 threads and 70 ms with 1 (``bench/throughput.py --quick``, session 10).
    """
    cores = usable_cores(processes_per_node)
    if gpu or workers == 0 or threads + workers <= cores:
        return None
    return (f"{threads} compute threads and {workers} DataLoader worker(s) share {cores} cores: the threads will wait "
            f"on each other; set train.threads={max(1, cores - workers)} (or fewer data.workers) for speed")
