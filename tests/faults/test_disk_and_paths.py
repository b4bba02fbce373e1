"""A full disk, an unwritable run directory, and the debris of a kill during a save."""
import errno
import os

import pytest
import torch

from clipdistill import cli
from clipdistill.errors import UserError
from clipdistill.train import checkpoint


def saved(directory, step, value):
    return checkpoint.save({"step": step, "w": torch.full((3,), float(value))}, directory, step, keep=2)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_full_disk_at_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, where):
    first = saved(tmp_path, 1, 1.0)
    if where == "torch.save":
        def half_then_full(state, file):  # some bytes reach the temp file, then the disk is full
            file.write(b"PK\x03\x04 partial")
            no_space()
        monkeypatch.setattr(torch, "save", half_then_full)
    else:
        monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(UserError) as err:
        saved(tmp_path, 2, 2.0)
    message = str(err.value)
    assert message == f"could not write checkpoint {tmp_path / 'step_00000002.pt'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    assert checkpoint.load(first)["w"].eq(1.0).all()


def test_resume_ignores_temp_files_and_falls_back_past_a_truncated_checkpoint(tmp_path, caplog):
    good = saved(tmp_path, 4, 4.0)
    truncated = saved(tmp_path, 6, 6.0)
    truncated.write_bytes(truncated.read_bytes()[:100])  # what a crash of the machine can leave
    (tmp_path / "step_00000008.pt.tmp").write_bytes(b"half of a save")  # a save killed before its rename
    path, state = checkpoint.load_resume("latest", tmp_path)
    assert path == good and state["step"] == 4
    assert any("step_00000006.pt" in m and "trying the checkpoint before it" in m for m in caplog.messages)
    with pytest.raises(UserError, match="cannot load checkpoint"):  # a path named explicitly is never replaced
        checkpoint.load_resume(str(truncated), tmp_path)
    good.write_bytes(b"")
    with pytest.raises(UserError, match="no readable checkpoint"):
        checkpoint.load_resume("latest", tmp_path)


def test_unwritable_run_directory_fails_before_training(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: {progress: false}\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = cli.main(["train", str(config), "--out", str(blocker / "run"), "student.model=tiny",
                     "data.num_samples=16", "train.batch_size=8"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipdistill train: error: cannot write to run directory {blocker / 'run'}")
    assert "\n" not in err


def test_full_disk_before_training_is_one_line(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    config = tmp_path / "c.yaml"
    config.write_text("train: {progress: false}\n")
    monkeypatch.setattr(Path, "write_text", no_space)
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run"), "student.model=tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"clipdistill train: error: cannot write to run directory {tmp_path / 'run'}: No space left on device"


def short_run(tmp_path, *overrides):
    config = tmp_path / "c.yaml"
    config.write_text("train: {progress: false}\n")
    return cli.main(["train", str(config), "--out", str(tmp_path / "run"), "student.model=tiny",
                     "data.num_samples=16", "train.batch_size=8", "train.steps=4", "train.save_every=2",
                     "train.log_every=1", "eval.retrieval=", "eval.zero_shot=", *overrides])


def test_full_disk_at_metrics_jsonl_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    from clipdistill.train import metrics_log

    real_open = open

    def disk_fills_after_two_lines(path, *args, **kwargs):
        file = real_open(path, *args, **kwargs)
        lines = []

        def write(text):  # the third record (step 3, after the checkpoint of step 2) finds the disk full
            lines.append(text)
            if len(lines) == 3:
                no_space()
            return type(file).write(file, text)

        file.write = write
        return file

    monkeypatch.setattr(metrics_log, "open", disk_fills_after_two_lines, raising=False)
    assert short_run(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"clipdistill train: error: could not write training metrics in {tmp_path / 'run'} "
                   "(metrics.jsonl, tensorboard/): No space left on device; the last checkpoint is kept")
    found = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in found] == ["step_00000002.pt"] and checkpoint.load(found[0])["step"] == 2


def test_full_disk_at_results_json_leaves_no_partial_file_and_keeps_the_final_checkpoint(tmp_path, monkeypatch,
                                                                                          capsys):
    real_replace = os.replace

    def full_for_results(src, dst):
        if str(dst).endswith("results.json"):
            no_space()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_results)
    assert short_run(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    results = tmp_path / "run" / "results.json"
    assert err == f"clipdistill train: error: could not write {results}: No space left on device"
    assert not list((tmp_path / "run").glob("results.json*"))
    final = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert checkpoint.load(final)["step"] == 4
