"""A NaN loss through the whole training loop: the run stops naming step and term, the last good
checkpoint stays; or, with train.skip_nonfinite, up to N steps are skipped, counted and logged."""
import json
import logging

import pytest
import torch

from clipdistill import cli
from clipdistill import config as config_lib
from clipdistill.losses.objective import Objective
from clipdistill.train import checkpoint
from clipdistill.train.loop import run
from clipdistill.train.optim import warmup_cosine

TINY = ["student.model=tiny", "data.num_samples=32", "data.workers=0", "train.batch_size=8", "train.steps=6",
        "train.save_every=2", "train.log_every=1", "train.progress=false", "optim.warmup_steps=1",
        "eval.retrieval=", "eval.zero_shot="]


@pytest.fixture
def nan_at_steps(monkeypatch):
    """Make the clip term NaN at the given (1-based) objective calls: training steps, with no accumulation."""
    poisoned, calls = set(), {"n": 0}
    original = Objective.forward

    def forward(self, student, teacher):
        calls["n"] += 1
        total, terms = original(self, student, teacher)
        if calls["n"] in poisoned:
            terms = {**terms, "clip": terms["clip"] * float("nan")}
            total = total * float("nan")
        return total, terms

    def poison(steps: set[int]) -> None:  # objective calls from now on, over however many runs follow
        calls["n"] = 0
        poisoned.update(steps)

    monkeypatch.setattr(Objective, "forward", forward)
    return poison


def test_nan_stops_the_run_naming_step_and_term_and_keeps_the_last_checkpoint(tmp_path, nan_at_steps, capsys):
    nan_at_steps({5})
    code = cli.main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipdistill train: error: non-finite loss at step 5 in term(s) clip") and "\n" not in err
    saved = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in saved] == ["step_00000002.pt", "step_00000004.pt"]
    state = checkpoint.load(saved[-1])
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["student"].values())


@pytest.fixture(autouse=True)
def _config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("losses: {clip: {weight: 1.0}}\n")


def test_skip_nonfinite_skips_counts_and_logs_without_updating(tmp_path, nan_at_steps, caplog):
    clean = run(config_lib.load(None, TINY + ["train.steps=2"]), tmp_path / "clean")
    assert clean["skipped_nonfinite_steps"] == 0
    nan_at_steps({2, 3})
    with caplog.at_level(logging.WARNING, logger="clipdistill.train"):
        results = run(config_lib.load(None, TINY + ["train.skip_nonfinite=2", "train.save_every=1",
                                                    "train.keep_checkpoints=10"]), tmp_path / "r")
    assert results["skipped_nonfinite_steps"] == 2
    assert sum("step skipped" in m and "non-finite loss at step 2" in m for m in caplog.messages) == 1
    one, two = (checkpoint.load(tmp_path / "r" / "checkpoints" / f"step_0000000{i}.pt") for i in (1, 2))
    assert one["skipped_nonfinite"] == 0 and two["skipped_nonfinite"] == 1
    for key, value in one["student"].items():  # the skipped step 2 left every weight and moment as it was
        assert torch.equal(value, two["student"][key]), key
    assert one["optimizer"]["state"][0]["exp_avg"].equal(two["optimizer"]["state"][0]["exp_avg"])
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    step_4 = next(r for r in records if r["step"] == 4 and "lr" in r)  # lr stays a function of the step
    assert step_4["lr"] == pytest.approx(warmup_cosine(3, base_lr=5e-4, warmup_steps=1, total_steps=6))
    skipped = [r for r in records if "skipped_nonfinite" in r]
    assert [(r["step"], r["skipped_nonfinite"]) for r in skipped] == [(2, 1), (3, 2)]


def test_skip_budget_counts_across_resume_then_stops(tmp_path, nan_at_steps):
    nan_at_steps({2, 5})  # objective calls, counted over both runs: steps 2 and 5
    run(config_lib.load(None, TINY + ["train.skip_nonfinite=1", "train.steps=4"]), tmp_path)
    with pytest.raises(Exception, match=r"non-finite loss at step 5 .*after skipping 1: train.skip_nonfinite=1"):
        run(config_lib.load(None, TINY + ["train.skip_nonfinite=1", "train.resume=latest"]), tmp_path)
    assert checkpoint.load(checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1])["step"] == 4
