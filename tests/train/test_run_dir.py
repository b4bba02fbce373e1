"""A run directory holds one run: reuse is refused before anything changes, --overwrite starts over,
resume continues; the start banner goes to train.log; resuming another architecture is one line."""
import json

import pytest

from clipdistill import cli
from clipdistill import config as config_lib
from clipdistill.errors import UserError
from clipdistill.train import checkpoint
from clipdistill.train.loop import run

TINY = ["student.model=tiny", "data.num_samples=64", "data.workers=0", "train.batch_size=16", "train.steps=2",
        "train.save_every=2", "train.progress=false", "eval.retrieval=", "eval.zero_shot="]


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_used_directory_is_refused_and_changes_nothing(tmp_path):
    run(config_lib.load(None, TINY), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=r"already holds a run .*resume=latest.*--overwrite"):
        run(config_lib.load(None, TINY + ["train.steps=4"]), tmp_path)
    assert snapshot(tmp_path) == before


def test_overwrite_starts_over_and_resume_continues(tmp_path):
    run(config_lib.load(None, TINY + ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=9"]), tmp_path)
    assert len(checkpoint.list_checkpoints(tmp_path / "checkpoints")) == 4
    (tmp_path / "notes.txt").write_text("mine")  # not a run file: kept
    run(config_lib.load(None, TINY), tmp_path, overwrite=True)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002.pt"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]  # the old run's records are gone, not appended to
    assert (tmp_path / "notes.txt").read_text() == "mine"
    run(config_lib.load(None, TINY + ["train.steps=3", "train.save_every=1", "train.resume=latest"]), tmp_path)
    assert checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1].name == "step_00000003.pt"


def test_cli_refusal_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("student: {model: tiny}\n")
    out = tmp_path / "run"
    args = ["train", str(config), "--out", str(out), *TINY]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0]
    assert cli.main(args + ["--overwrite"]) == 0


def test_banner_in_train_log(tmp_path):
    run(config_lib.load(None, TINY + ["train.threads=1"]), tmp_path)
    log = (tmp_path / "train.log").read_text()
    for expected in ("student  tiny", "teacher  none", "data     synthetic", "64 rows", "threads  1 (as set)",
                     "eval     none"):
        assert expected in log, log


def test_resuming_another_architecture_is_one_line(tmp_path):
    run(config_lib.load(None, TINY), tmp_path)
    with pytest.raises(UserError) as err:
        run(config_lib.load(None, TINY + ["student.model=tiny-rn", "train.steps=4", "train.resume=latest"]), tmp_path)
    message = str(err.value)
    assert "\n" not in message and "'tiny'" in message and "cannot resume" in message
