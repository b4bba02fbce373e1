"""What a forked training process runs: the CLI's own entry point, on one thread (see test_kill_resume)."""
import sys

import torch

from clipdistill import cli


def train(argv: list[str]) -> None:
    torch.set_num_threads(1)
    sys.exit(cli.main(argv))
