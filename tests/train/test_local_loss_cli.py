"""`train.local_loss` through the real command under torchrun: each rank's rows against the global batch
give the same losses and weights as full N x N logits on every rank (the gradients are exact)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipdistill.train import checkpoint

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def _torchrun(out: Path, local_loss: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "clipdistill.cli", "train", str(SMOKE), "--out", str(out), f"train.local_loss={local_loss}",
               "train.steps=3", "train.save_every=3", "train.batch_size=8", "train.progress=false",
               "train.log_every=1", "eval.retrieval=", "eval.zero_shot="]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_local_loss_through_torchrun_equals_global_logits(tmp_path):
    runs = {mode: _torchrun(tmp_path / mode, mode) for mode in ("true", "false")}
    for mode, done in runs.items():
        assert done.returncode == 0, (mode, done.stderr[-3000:])
    assert runs["true"].stdout.count("retrieval") == 0 and runs["true"].stdout.count("{") == 1  # rank 0 prints
    losses = {mode: [json.loads(line)["loss"] for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in line] for mode in runs}
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5, abs=1e-6)
    local, full = (checkpoint.load(tmp_path / mode / "checkpoints" / "step_00000003.pt") for mode in ("true", "false"))
    for key, value in full["student"].items():
        torch.testing.assert_close(local["student"][key], value, rtol=1e-4, atol=1e-5)

