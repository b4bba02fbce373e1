"""SIGKILL a real training process at random points; resume=latest must end exactly where an
uninterrupted run ends: weights, heads, optimizer moments, schedule, RNG and data position.

The kill lands wherever the process happens to be (inside a step, a save, the data loader): it is
triggered once a new checkpoint appears, after a random delay. ``KILL_SEED=N`` replays a failure;
the points used are in the assertion message.

Start-up (importing torch and open_clip) costs a loaded 2-core machine over 10 s of CPU per process,
so the default test forks its processes from a server that has imported clipdistill once
(multiprocessing's forkserver); each runs ``clipdistill.cli.main(["train", ...])``, the function
``python -m clipdistill.cli`` calls. The slow test runs the literal ``python -m clipdistill.cli train``
command, once with data.workers=0 and once with 1.
"""
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipdistill import config as config_lib
from clipdistill.train import checkpoint
from clipdistill.train.loop import run
from faults import forked_cli

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
STEPS = 9  # 24 samples / batch 8 = 3 steps per epoch: kills land mid-epoch and the run crosses epochs
# A teacher small enough to keep steps cheap, with a dimension unlike the student's (64), so the
# objective's projection heads and ICL's learnable scale are part of what must resume exactly.
TEACHER = ("teacher.model={embed_dim: 48, vision_cfg: {image_size: 32, patch_size: 8, width: 32, layers: 1, "
           "head_width: 32}, text_cfg: {context_length: 32, vocab_size: 49408, width: 32, heads: 1, layers: 1}}")
ARGS = ["student.model=tiny", "teacher.source=openclip", TEACHER, "data.num_samples=24",
        "train.batch_size=8", f"train.steps={STEPS}", "train.save_every=1", "train.keep_checkpoints=2",
        "train.log_every=1", "train.progress=false", "optim.warmup_steps=3", "eval.retrieval=", "eval.zero_shot=",
        "losses.clip.weight=1.0", "losses.fd.weight=3.9", "losses.icl.weight=1.0",
        # One compute thread in every run, whatever the environment: the in-process reference took the
        # machine's default (2 here) while the CLI processes had OMP_NUM_THREADS=1, and their float sums differed.
        "train.threads=1"]
KILL_SEED = int(os.environ.get("KILL_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
_TIMEOUT_S = 240
# One thread everywhere: the in-process reference and the killed processes must do the same float
# operations, and a single thread is ~10x faster than two on a CPU shared with other jobs.
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}



def newest_step(out: Path) -> int:
    found = checkpoint.list_checkpoints(out / "checkpoints")
    return int(found[-1].stem.split("_")[1]) if found else 0


def train_command(out: Path, workers: int) -> list[str]:
    return ["train", SMOKE, "--out", str(out), *ARGS, f"data.workers={workers}", "resume=latest"]


def launch(out: Path, workers: int) -> subprocess.Popen:
    """``python -m clipdistill.cli train ... resume=latest``."""
    return subprocess.Popen([sys.executable, "-m", "clipdistill.cli", *train_command(out, workers)], env=_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def forked(out: Path, workers: int) -> multiprocessing.Process:
    """The same command in a process forked from the (pre-imported) fork server."""
    context = multiprocessing.get_context("forkserver")
    # Not a daemon: with data.workers=1 it starts DataLoader workers of its own.
    process = context.Process(target=forked_cli.train, args=(train_command(out, workers),))
    process.start()
    return process


def _alive(process) -> bool:
    return process.poll() is None if isinstance(process, subprocess.Popen) else process.is_alive()


def _why_ended(process) -> str:
    if isinstance(process, subprocess.Popen):
        return f"code {process.returncode}: {process.stderr.read().decode()}"
    return f"exit code {process.exitcode}"


def kill_after_step(process, out: Path, step: int, delay_s: float) -> None:
    """SIGKILL once a checkpoint at or past ``step`` (and past where this process started) exists,
    ``delay_s`` later: somewhere inside a later step or save."""
    # A late kill can find an earlier launch already finished (its last checkpoint is STEPS): then this
    # launch resumes at the end and exits, and there is nothing left to kill.
    step = min(max(step, newest_step(out) + 1), STEPS)
    deadline = time.time() + _TIMEOUT_S
    while newest_step(out) < step:
        if not _alive(process):
            pytest.fail(f"run ended before step {step} ({_why_ended(process)})")
        if time.time() > deadline:
            os.kill(process.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint for step {step} within {_TIMEOUT_S} s")
        time.sleep(0.01)
    time.sleep(delay_s)
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # a kill after the last step can come too late: the run already ended
        pass
    process.wait() if isinstance(process, subprocess.Popen) else process.join()


def kill_points(rng: random.Random, count: int) -> list[tuple[int, float]]:
    steps = sorted(rng.sample(range(1, STEPS - 1), count))
    return [(step, rng.uniform(0.0, 0.4)) for step in steps]


def assert_same_training_state(a: dict, b: dict, context: str) -> None:
    assert a["step"] == b["step"] == STEPS, context
    for part in ("student", "objective"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{context}: {part}.{key} differs"
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name])), \
                f"{context}: optimizer state {index}.{name} differs"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"], context  # lr included
    assert torch.equal(a["rng"], b["rng"]), context


def final_state(out: Path) -> dict:
    return checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])


def uninterrupted(tmp_path: Path) -> dict:
    run(config_lib.load(SMOKE, ARGS + ["data.workers=0"]), tmp_path / "uninterrupted")
    return final_state(tmp_path / "uninterrupted")


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    out = tmp_path / "killed"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(forked_cli.PRELOAD)
    multiprocessing.forkserver.ensure_running()  # imports while the reference trains
    expected = uninterrupted(tmp_path)
    points = kill_points(random.Random(KILL_SEED), 3)
    # Worker counts alternate between launches: the data position must not depend on them either.
    for launch_number, (step, delay_s) in enumerate(points):
        process = forked(out, workers=launch_number % 2)
        try:
            kill_after_step(process, out, step, delay_s)
        finally:
            process.kill()  # the test failed before killing it itself
            process.join()
    run(config_lib.load(SMOKE, ARGS + ["data.workers=1", "train.resume=latest"]), out)
    context = f"KILL_SEED={KILL_SEED}, kills after steps (+delay s) {points}"
    assert_same_training_state(expected, final_state(out), context)
    assert len(checkpoint.list_checkpoints(out / "checkpoints")) == 2  # keep_checkpoints holds across kills


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_cli_process_killed_three_times_resumes_exactly(tmp_path, workers):
    expected = uninterrupted(tmp_path)
    points = kill_points(random.Random(KILL_SEED), 3)
    out = tmp_path / "killed"
    for step, delay_s in points:
        kill_after_step(launch(out, workers), out, step, delay_s)
    final = launch(out, workers)
    assert final.wait(timeout=_TIMEOUT_S) == 0, final.stderr.read().decode()
    assert_same_training_state(expected, final_state(out), f"KILL_SEED={KILL_SEED}, workers={workers}, {points}")
