"""Every command proves it can write its outputs before the work; a write failure is one line, exit 2.

Tests run as root, where chmod does not stop a write: an output "under a regular file" (``file/sub``)
is the unwritable location that works for everyone; a read-only mount is simulated by monkeypatching.
"""
import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdistill import atomic, cli
from clipdistill.errors import UserError
from clipdistill.models import build_student


def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.fixture
def blocked(tmp_path):
    """A path whose parent is a regular file: nothing can be created there, root included."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return blocker / "out"


@pytest.fixture
def inputs(tmp_path):
    """Just enough real input for each command, so a refusal is about the output, not the input."""
    torch.manual_seed(0)
    student = build_student("tiny")
    torch.save({"step": 1, "student": student.model.state_dict(), "config": {"student": {"model": "tiny"}}},
               tmp_path / "run.pt")
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    (tmp_path / "result.json").write_text('{"dataset": "d", "model": "m", "pretrained": "p", "task": "t", '
                                          '"metrics": {"acc1": 0.5}}')
    (tmp_path / "c.yaml").write_text("teacher: {source: openclip, model: tiny-teacher}\n"
                                     "data: {num_samples: 16}\ntrain: {progress: false}\n")
    return tmp_path


def commands(inputs: Path, out: Path) -> dict[str, list[str]]:
    return {
        "eval": ["eval", "--model", str(inputs / "run.pt"), "--task", "zeroshot_retrieval", "--dataset", "synthetic",
                 "--num-images", "8", "--output", str(out / "r.json"), "--workers", "0", "--no-progress"],
        "report": ["report", str(inputs / "result.json"), "--out", str(out / "table.md")],
        "cache": ["cache", str(inputs / "c.yaml"), "--out", str(out)],
        "curate": ["curate", "--embeddings", str(inputs / "emb.npy"), "--out", str(out), "--no-progress"],
        "cluster": ["cluster", "--embeddings", str(inputs / "emb.npy"), "--clusters", "4", "--out", str(out),
                    "--no-progress"],
        "export": ["export", str(inputs / "run.pt"), str(out)],
    }


# What each command does first once its output is known to be writable.
FIRST_WORK = {"eval": ["clipdistill.eval.command._datasets", "clipdistill.eval.command.load_model"],
              "report": ["clipdistill.eval.report.read_result"],
              "cache": ["clipdistill.cache.command.build_cache"],
              "curate": ["clipdistill.curate.command.open_rows"],
              "cluster": ["clipdistill.curate.cluster_command.from_files"],
              "export": ["clipdistill.export.export_run", "clipdistill.export.load_student"]}


@pytest.mark.parametrize("command", ["eval", "report", "cache", "curate", "cluster", "export"])
def test_unwritable_output_is_one_line_exit_2_before_any_work(inputs, blocked, command, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work before checking its output")

    for first_work in FIRST_WORK[command]:
        monkeypatch.setattr(first_work, no_work)
    started = time.time()
    assert cli.main(commands(inputs, blocked)[command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipdistill {command}: error: cannot write") and str(blocked) in err, err
    assert err.endswith("Not a directory") and "\n" not in err and "Traceback" not in err
    assert time.time() - started < 5


@pytest.mark.parametrize("command", ["eval", "curate"])
def test_a_read_only_mount_is_one_line_too(inputs, command, capsys, monkeypatch):
    monkeypatch.setattr(atomic.tempfile, "NamedTemporaryFile", read_only)
    assert cli.main(commands(inputs, inputs / "out")[command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("Read-only file system") and "\n" not in err


def test_the_checks_pass_on_a_writable_location_and_leave_nothing_behind(tmp_path):
    assert atomic.ensure_writable_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert list(tmp_path.iterdir()) == []  # a refused command leaves no empty output folder either
    (tmp_path / "old").mkdir()
    atomic.ensure_writable_dir(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []
    assert atomic.ensure_writable_file(tmp_path / "sub" / "r.json") == tmp_path / "sub" / "r.json"
    assert list((tmp_path / "sub").iterdir()) == []
    with pytest.raises(UserError, match="it is a directory"):
        atomic.ensure_writable_file(tmp_path / "sub")


def test_a_failing_cleanup_does_not_hide_the_write_error(tmp_path, monkeypatch):
    # On a read-only mount both the write and the removal of its temporary file fail.
    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(UserError) as err:
        atomic.write_text_atomic(tmp_path / "r.json", "{}", what="result")
    assert str(err.value) == f"could not write result {tmp_path / 'r.json'}: Read-only file system"


def test_an_unforeseen_os_error_in_a_command_is_still_one_line(monkeypatch, capsys):
    import clipdistill.eval.report as report

    def fails(argv):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/somewhere/file")

    monkeypatch.setattr(report, "main", fails)
    assert cli.main(["report", "x.json"]) == 2
    assert capsys.readouterr().err.strip() == \
        "clipdistill report: error: could not access /somewhere/file: Permission denied"
