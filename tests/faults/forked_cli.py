"""What a forked process runs: the CLI's own entry point, on one thread (see test_kill_resume)."""
import itertools
import multiprocessing
import os
import signal
import sys

import torch

from clipdistill import cli

# What the fork server imports once, for every test that forks from it (the first to start it decides).
PRELOAD = ["clipdistill.train.loop", "clipdistill.curate.command", "faults.forked_cli"]


def train(argv: list[str]) -> None:
    torch.set_num_threads(1)
    # A process started by the fork server inherits its start method, so its DataLoader workers would be
    # children of the fork server too; their watchdog (is my parent still the trainer?) then never sees a
    # SIGKILLed trainer die, and each kill would leave a worker behind. `python -m clipdistill.cli` forks.
    multiprocessing.set_start_method("fork", force=True)
    sys.exit(cli.main(argv))


def curate_killed_at_rename(argv: list[str], rename: int, before: bool, chunk_groups: int) -> None:
    """``clipdistill curate ...`` SIGKILLing itself at its ``rename``-th ``os.replace`` — every file it
    writes is renamed into place — just before that rename or just after it.

    The chunk size is passed here: a forked process has the fork server's environment, not the test's.
    """
    os.environ["CLIPDISTILL_CURATE_CHUNK"] = str(chunk_groups)
    real_replace, calls = os.replace, itertools.count(1)

    def replace(src, dst):
        killing = next(calls) == rename
        if killing and before:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if killing:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    sys.exit(cli.main(["curate", *argv]))
