"""Export round trip: open_clip alone loads the student and gives the run's embeddings."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clipdistill.cli import main as cli
from clipdistill.losses.objective import build_objective
from clipdistill.models import build_student
from clipdistill.models.load_any import load_model


@pytest.fixture
def run_checkpoint(tmp_path):
    torch.manual_seed(1)
    student = build_student("tiny")
    objective = build_objective({"clip": {}, "fd": {}, "icl": {}}, student_dim=64, teacher_dim=96)
    path = tmp_path / "step_00000005.pt"
    torch.save({"step": 5, "student": student.model.state_dict(), "objective": objective.state_dict(),
                "config": {"student": {"model": "tiny"}}}, path)
    return path, student


def test_open_clip_loads_the_export_with_identical_embeddings(tmp_path, run_checkpoint):
    path, student = run_checkpoint
    assert cli(["export", str(path), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["open_clip_config.json",
                                                                   "open_clip_model.safetensors"]
    weights = load_file(str(tmp_path / "out" / "open_clip_model.safetensors"))
    assert not any(key.startswith(("terms.", "project")) for key in weights)  # KD heads stripped
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'out'}")
    images, tokens = torch.randn(3, 3, 32, 32), tokenizer(["a red circle", "a blue square", "x"])
    student.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), student.model.encode_image(images))
        torch.testing.assert_close(model.encode_text(tokens), student.model.encode_text(tokens))
    assert preprocess.transforms[0].size == 32
    config = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["embed_dim"] == 64


def test_eval_loads_the_export_and_the_checkpoint_alike(tmp_path, run_checkpoint):
    path, _ = run_checkpoint
    cli(["export", str(path), str(tmp_path / "out")])
    exported, run = load_model(str(tmp_path / "out")), load_model(str(path))
    tokens = run.encoder.tokenizer(["one large red circle"])
    torch.testing.assert_close(exported.encoder.encode_text(tokens), run.encoder.encode_text(tokens).detach())
    assert run.objective_state is not None and exported.objective_state is None


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert cli(["export", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    assert cli(["export", str(tmp_path / "plain.pt"), str(tmp_path / "out")]) == 2
    assert "not a clipdistill run checkpoint" in capsys.readouterr().err


def test_full_disk_during_reexport_keeps_the_previous_export_and_says_one_line(tmp_path, run_checkpoint,
                                                                               monkeypatch, capsys):
    import errno
    import os

    path, _ = run_checkpoint
    out = tmp_path / "out"
    assert cli(["export", str(path), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def full_for_weights(src, dst):
        if str(dst).endswith(".safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_weights)
    assert cli(["export", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"could not write {out / 'open_clip_model.safetensors'}: No space left on device")
    assert "\n" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp left, weights untouched
