"""`clipdistill eval` and `clipdistill report` in-process, on tiny models and files made here."""
import json

import pytest
import torch

from clipdistill.cli import main as cli
from clipdistill.models import build_student

CB_KEYS = {"dataset", "model", "pretrained", "task", "metrics"}


@pytest.fixture
def models(tmp_path):
    torch.manual_seed(0)
    student = build_student("tiny")
    torch.save({"student": student.model.state_dict(), "config": {"student": {"model": "tiny"}}}, tmp_path / "run.pt")
    torch.save(build_student("tiny-teacher").model.state_dict(), tmp_path / "teacher.pt")
    return str(tmp_path / "run.pt"), f"openclip:tiny-teacher:{tmp_path / 'teacher.pt'}"


def _folder(root, solid, classes=6, per_class=3):
    for label in range(classes):
        (root / f"class_{label}").mkdir(parents=True)
        for v in range(per_class):
            solid(label * 9, v).save(root / f"class_{label}" / f"{v}.png")
    return root


def test_zero_shot_with_teacher_writes_clip_benchmark_schema(tmp_path, models, solid):
    student, teacher = models
    folder = _folder(tmp_path / "data", solid)
    out = tmp_path / "zs.json"
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")  # 80 would be slow
    assert cli(["eval", "--model", student, "--task", "zeroshot_classification", "--dataset", f"imagefolder:{folder}",
                "--output", str(out), "--teacher", teacher, "--workers", "0",
                "--templates", str(tmp_path / "templates.txt")]) == 0
    result = json.loads(out.read_text())
    assert CB_KEYS <= set(result) and result["task"] == "zeroshot_classification" and result["model"] == "tiny"
    metrics = result["metrics"]
    assert {"acc1", "acc5", "mean_per_class_recall", "fidelity_agreement_top1",
            "teacher_acc1"} <= set(metrics)
    assert 0 <= metrics["fidelity_agreement_top1"] <= 1


def test_linear_probe_and_retrieval_then_report(tmp_path, models, solid):
    student, _ = models
    folder = _folder(tmp_path / "data", solid, classes=6, per_class=5)
    assert cli(["eval", "--model", student, "--task", "linear_probe", "--dataset", f"imagefolder:{folder}",
                "--train-dataset", f"imagefolder:{folder}", "--output", str(tmp_path / "lp.json"), "--workers", "0",
                "--lp-epochs", "2", "--val-proportion", "0"]) == 0
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"} <= set(json.loads((tmp_path / "lp.json").read_text())["metrics"])
    assert cli(["eval", "--model", student, "--task", "zeroshot_retrieval", "--dataset", "synthetic",
                "--num-images", "20", "--output", str(tmp_path / "r.json"), "--workers", "0"]) == 0
    assert cli(["report", str(tmp_path / "lp.json"), str(tmp_path / "r.json"), "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text().splitlines()
    assert table[0].startswith("| model | pretrained | dataset | task | lp_acc1") and len(table) == 4
    assert "image_retrieval_recall@1" in table[0] and "| linear_probe |" in table[2]
    cli(["report", str(tmp_path / "lp.json"), "--out", str(tmp_path / "t.csv")])
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("model,pretrained,dataset,task,lp_acc1")


def test_user_errors_exit_2(tmp_path, models, capsys):
    student, _ = models
    assert cli(["eval", "--model", student, "--task", "linear_probe", "--dataset", "synthetic",
                "--output", str(tmp_path / "x.json")]) == 2
    assert "--train-dataset" in capsys.readouterr().err
    assert cli(["eval", "--model", str(tmp_path / "nope.pt"), "--task", "zeroshot_retrieval", "--dataset", "synthetic",
                "--output", str(tmp_path / "x.json")]) == 2
    (tmp_path / "bad.json").write_text("{}")
    assert cli(["report", str(tmp_path / "bad.json")]) == 2


def test_full_disk_at_the_eval_output_keeps_the_previous_result(tmp_path, models, monkeypatch, capsys):
    import errno
    import os

    student, _ = models
    out = tmp_path / "r.json"
    argv = ["eval", "--model", student, "--task", "zeroshot_retrieval", "--dataset", "synthetic",
            "--num-images", "10", "--output", str(out), "--workers", "0", "--no-progress"]
    out.write_text('{"previous": true}')

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()  # one line: no progress bars asked for, no traceback
    assert err.endswith(f"could not write {out}: No space left on device") and "\n" not in err and "encode" not in err
    assert out.read_text() == '{"previous": true}' and [p.name for p in tmp_path.glob("r.json*")] == ["r.json"]
