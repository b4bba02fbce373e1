"""Threads and DataLoader workers are sized to the cores a process may use, unless the user decided."""
import os

import pytest
import torch

from clipdistill import threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cores_less_what_auto_workers_take(four_cores):
    assert threads.configure_threads(0) == (3, "4 cores less 1 for DataLoader workers")
    assert torch.get_num_threads() == 3
    assert threads.configure_threads(0, gpu=True)[0] == 1  # next to a GPU the cores decode; never below one
    assert threads.configure_threads(0, processes_per_node=2)[0] == 2  # torchrun ranks share the node


def test_the_user_decides(four_cores, monkeypatch):
    assert threads.configure_threads(2) == (2, "as set")
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert threads.configure_threads(0) == (1, "from OMP_NUM_THREADS")


def test_auto_workers_fit_the_machine(monkeypatch):
    for cores, cpu, gpu in ((1, 0, 1), (2, 0, 1), (4, 1, 3), (16, 4, 8), (64, 8, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert threads.dataloader_workers("auto") == cpu, cores
        assert threads.dataloader_workers("auto", gpu=True) == gpu, cores
    assert threads.dataloader_workers(3) == 3


def test_threads_and_workers_beyond_the_cores_are_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    warning = threads.oversubscription(2, 1)
    assert "2 compute threads and 1 DataLoader worker(s) share 2 cores" in warning and "train.threads=1" in warning
    assert threads.oversubscription(1, 1) is None and threads.oversubscription(2, 0) is None
    assert threads.oversubscription(2, 1, gpu=True) is None  # the GPU computes; the threads mostly wait
    assert "train.threads=1" in threads.oversubscription(1, 4)  # never advises fewer than one thread
