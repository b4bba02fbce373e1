"""End to end: the training command in-process on tiny data."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from clipdistill import cli
from clipdistill import config as config_lib
from clipdistill.train import checkpoint
from clipdistill.train.loop import run

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")

TINY_KD = ["student.model=tiny", "teacher.source=openclip", "teacher.model=tiny-teacher",
           "data.num_samples=256", "data.workers=0", "train.batch_size=16", "train.log_every=2",
           "train.progress=false", "eval.num_images=40", "optim.warmup_steps=2",
           "losses.clip.weight=1.0", "losses.fd.weight=3.9", "losses.crd.weight=1.0", "losses.icl.weight=1.0"]


def final_state(out):
    return checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])


def test_kd_run_writes_everything(tmp_path):
    cfg = config_lib.load(None, TINY_KD + ["train.steps=6", "train.save_every=3", "train.keep_checkpoints=1"])
    results = run(cfg, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6]
    for record in train_lines:
        assert {"clip", "fd", "crd", "icl", "lr", "samples_per_s"} <= set(record)
        weighted = record["clip"] + 3.9 * record["fd"] + record["crd"] + record["icl"]
        assert record["loss"] == pytest.approx(weighted, rel=1e-4)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 6
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000006.pt"]
    state = final_state(tmp_path)
    assert state["config"]["losses"]["fd"]["weight"] == 3.9
    assert any(k.startswith("terms.fd.project.image") for k in state["objective"])  # 64 -> 96 heads saved
    assert list((tmp_path / "tensorboard").iterdir())
    for key in ("image_retrieval_recall@1", "text_retrieval_recall@5", "retrieval_mean_recall", "acc1", "acc5"):
        assert 0.0 <= results["metrics"][key] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 6


def test_resume_equals_continuous(tmp_path):
    common = TINY_KD + ["train.steps=8", "train.save_every=4", "eval.retrieval=", "eval.zero_shot="]
    run(config_lib.load(None, common), tmp_path / "continuous")
    a = final_state(tmp_path / "continuous")
    # A run killed between steps 4 and 8: only the step-4 checkpoint survives ...
    run(config_lib.load(None, common), tmp_path / "resumed")
    checkpoint.list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].unlink()
    # ... then the same command with resume=latest recomputes steps 5-8 from the saved state and data position.
    run(config_lib.load(None, common + ["train.resume=latest"]), tmp_path / "resumed")
    b = final_state(tmp_path / "resumed")
    assert a["step"] == b["step"] == 8
    for part in ("student", "objective"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    # The recomputed steps replace their first records instead of appearing twice, with the same values.
    metrics = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("continuous", "resumed")}
    assert [r["step"] for r in metrics["resumed"]] == [r["step"] for r in metrics["continuous"]] == [2, 4, 6, 8]
    assert [r["loss"] for r in metrics["resumed"]] == [r["loss"] for r in metrics["continuous"]]


def test_resume_drops_the_later_records_and_a_line_cut_by_a_kill(tmp_path):
    from clipdistill.train.metrics_log import MetricsLog

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLog(tmp_path, enabled=True)
    for step in (2, 4, 6):
        first.write(step, {"loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 8, "lo')  # a kill in the middle of a line
    resumed = MetricsLog(tmp_path, enabled=True, resumed_at=4)
    resumed.write(6, {"loss": 0.5})
    resumed.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 4.0}, {"step": 6, "loss": 0.5}]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    # The checkpoint's step stays, the recomputed one appears once with its new value.
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 2.0), (4, 4.0), (6, 0.5)]


def test_baseline_needs_no_teacher(tmp_path):
    cfg = config_lib.load(None, ["student.model=tiny-rn", "data.num_samples=64", "data.workers=0",
                                 "train.batch_size=8", "train.steps=2", "train.progress=false",
                                 "eval.retrieval=", "eval.zero_shot="])
    results = run(cfg, tmp_path)
    assert results["steps"] == 2


def test_mfd_refuses_non_vit_student(tmp_path, capsys):
    code = cli.main(["train", SMOKE, "--out", str(tmp_path), "student.model=tiny-rn",
                     "losses.mfd.weight=1.0"])
    assert code == 2
    assert "needs a ViT student" in capsys.readouterr().err


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["train", SMOKE, "--out", str(tmp_path), "train.stesp=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "clipdistill train: error: unknown config key 'train.stesp' (did you mean 'train.steps'?)"
    assert cli.main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli.main(["train", SMOKE, "--out", str(tmp_path), "teacher.model=ViT-Q-99"]) == 2
    assert "unknown model 'ViT-Q-99'" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "train" in out


def test_the_start_warns_when_threads_and_workers_oversubscribe_the_cores(monkeypatch, caplog):
    import os
    from types import SimpleNamespace

    from clipdistill.train import loop

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    cfg = config_lib.from_dict({"data": {"kind": "synthetic", "workers": 1}, "train": {"threads": 2}})
    try:
        with caplog.at_level("WARNING", logger="clipdistill.train"):
            assert loop.choose_workers_and_threads(cfg, SimpleNamespace(device=torch.device("cpu"), is_main=True)) \
                == (1, (2, "as set"))
    finally:
        torch.set_num_threads(before)
    assert "set train.threads=1" in caplog.text
