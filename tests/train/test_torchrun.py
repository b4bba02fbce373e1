"""`torchrun` with 2 CPU processes (gloo) runs the real training command end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun binds a free port itself (a fixed one collides with any other run on the machine).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "clipdistill.cli", "train", str(SMOKE), "--out", str(tmp_path),
               "train.steps=4", "train.save_every=2", "train.batch_size=8", "train.progress=false",
               "eval.num_images=24", "train.log_every=2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # written once, by rank 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    assert "retrieval_mean_recall" in json.loads((tmp_path / "results.json").read_text())["metrics"]
