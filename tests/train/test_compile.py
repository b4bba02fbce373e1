"""train.compile: the compiled student and objective train as the eager ones do (resume, accumulation,
2 ranks under DDP), and a compiler failure falls back to eager with one warning.

Compiled with the aot_eager backend (the same dynamo graph capture and autograd tracing as inductor,
without generating code), so the suite stays fast; the inductor run is under ``-m slow``.
"""
import json
import logging
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipdistill import config as config_lib
from clipdistill.train import checkpoint, compiling
from clipdistill.train.loop import run

TINY_KD = ["student.model=tiny", "teacher.source=openclip", "teacher.model=tiny-teacher", "data.num_samples=64",
           "data.workers=0", "train.batch_size=16", "train.steps=4", "train.save_every=2", "train.log_every=1",
           "train.progress=false", "optim.warmup_steps=1", "eval.retrieval=", "eval.zero_shot=",
           "losses.clip.weight=1.0", "losses.fd.weight=3.9", "losses.crd.weight=1.0", "losses.icl.weight=1.0"]


@pytest.fixture(autouse=True)
def fast_backend(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def final(out):
    return checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])


def assert_same_training(a, b):
    assert losses(a) == pytest.approx(losses(b), rel=1e-5, abs=1e-6)
    for key, value in final(a)["student"].items():
        torch.testing.assert_close(final(b)["student"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", [pytest.param("student", marks=pytest.mark.slow), "all"])
def test_compiled_training_equals_eager_with_accumulation(tmp_path, mode):
    run(config_lib.load(None, TINY_KD + ["train.accum_steps=2"]), tmp_path / "eager")
    run(config_lib.load(None, TINY_KD + ["train.accum_steps=2", f"train.compile={mode}"]), tmp_path / mode)
    assert_same_training(tmp_path / mode, tmp_path / "eager")


@pytest.mark.slow
def test_compiled_run_resumes(tmp_path):
    run(config_lib.load(None, TINY_KD + ["train.compile=all"]), tmp_path / "continuous")
    run(config_lib.load(None, TINY_KD + ["train.compile=all"]), tmp_path / "resumed")
    checkpoint.list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].unlink()
    run(config_lib.load(None, TINY_KD + ["train.compile=all", "train.resume=latest"]), tmp_path / "resumed")
    assert_same_training(tmp_path / "resumed", tmp_path / "continuous")
    assert not any(k.startswith("_orig_mod") for k in final(tmp_path / "resumed")["student"])  # keys unchanged


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C compiler\nlong traceback")
        return fails

    monkeypatch.setattr(compiling.torch, "compile", broken_compile)
    run(config_lib.load(None, TINY_KD), tmp_path / "eager")
    with caplog.at_level(logging.WARNING, logger="clipdistill.train"):
        run(config_lib.load(None, TINY_KD + ["train.compile=all"]), tmp_path / "fallback")
    warned = [m for m in caplog.messages if "could not compile" in m]
    assert len(warned) == 2 and all("running it eagerly" in m and "\n" not in m for m in warned)  # student, objective
    assert_same_training(tmp_path / "fallback", tmp_path / "eager")


def test_a_compiled_result_without_gradient_falls_back(caplog):
    def detached(x):
        return (x * 2).detach()

    wrapped = compiling.CompiledOrEager(detached, "the objective")
    wrapped.compiled = detached  # as inductor's output was for a CLIP-only objective
    wrapped.eager = lambda x: x * 2
    x = torch.ones(3, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="clipdistill.train"):
        assert wrapped(x).requires_grad
    assert wrapped.failed and any("no gradient" in m for m in caplog.messages)


def test_unknown_mode_is_one_line(tmp_path):
    from clipdistill.errors import UserError

    with pytest.raises(UserError, match="unknown train.compile 'fast'.*off, student, all"):
        run(config_lib.load(None, TINY_KD + ["train.compile=fast"]), tmp_path)


def _ddp_worker(rank, world, init_file, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    compiling.BACKEND = "aot_eager"
    try:
        for mode in ("off", "all"):
            run(config_lib.load(None, TINY_KD + [f"train.compile={mode}", "train.batch_size=8"]), f"{out}/{mode}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_ddp_equals_eager_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    assert_same_training(tmp_path / "all", tmp_path / "off")


@pytest.mark.slow
def test_inductor_compiled_training_equals_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "inductor")
    run(config_lib.load(None, TINY_KD), tmp_path / "eager")
    run(config_lib.load(None, TINY_KD + ["train.compile=all"]), tmp_path / "inductor")
    assert_same_training(tmp_path / "inductor", tmp_path / "eager")
