"""Losses found by name, and losses written outside the package used by their module:Class key."""
import textwrap

import pytest
import torch
import yaml

from clipdistill import UserError, losses
from clipdistill import config as config_lib
from clipdistill.losses.objective import build_objective
from clipdistill.losses.registry import register
from clipdistill.train import checkpoint
from toys import make_inputs

EXTERNAL = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class SimilarityMSE(nn.Module):
        """scale * MSE between the student's and the teacher's image-text cosine matrices."""

        needs_teacher = True

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale
            self.calls = 0

        def forward(self, student, teacher):
            self.calls += 1
            s = F.normalize(student.image, dim=-1) @ F.normalize(student.text, dim=-1).t()
            t = teacher.image @ teacher.text.t()
            return self.scale * (s - t).pow(2).mean()


    class NotALoss:
        pass
''')


@pytest.fixture
def tests_pkg(tmp_path, monkeypatch):
    package = tmp_path / "tests_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "extra_losses.py").write_text(EXTERNAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tests_pkg.extra_losses"


def test_names_lists_the_registered_losses():
    names = losses.names()
    assert names == sorted(names)
    assert {"clip", "crd", "fd", "mfd", "gd", "gd_raw", "icl", "cross_kd", "afd", "soft_clip", "affinity",
            "cid_cluster", "cid_instance", "siglip", "sigmoid_kd", "crd_image"} == set(names)
    assert not hasattr(losses, "STUDENT_ONLY")


def test_register_refuses_a_taken_name_and_a_missing_declaration():
    with pytest.raises(ValueError, match="registered twice"):
        @register("fd")
        class Other(torch.nn.Module):
            needs_teacher = True
    with pytest.raises(TypeError, match="needs_teacher"):
        @register("undeclared_loss")
        class Undeclared(torch.nn.Module):
            pass
    assert "undeclared_loss" not in losses.names()


def test_module_class_key_builds_with_checked_kwargs(tests_pkg):
    key = f"{tests_pkg}:SimilarityMSE"
    loss = losses.get(key, scale=2.0, student_dim=6, teacher_dim=10)  # dims dropped: it does not take them
    assert loss.scale == 2.0
    with pytest.raises(UserError, match=r"^loss 'tests_pkg.extra_losses:SimilarityMSE' has no parameter 'scael'"):
        losses.get(key, scael=2.0)
    assert losses.needs_teacher([key, "clip"])


@pytest.mark.parametrize("key, message", [
    ("no_such_module_xyz:Loss", r"^loss 'no_such_module_xyz:Loss': cannot import module 'no_such_module_xyz'"),
    ("{pkg}:Missing", r"has no nn.Module class 'Missing'$"),
    ("{pkg}:NotALoss", r"has no nn.Module class 'NotALoss'$"),
    ("fdd", r"^unknown loss 'fdd' \(available: afd, "),
])
def test_a_bad_key_is_one_line(tests_pkg, key, message):
    with pytest.raises(UserError, match=message) as err:
        losses.get(key.format(pkg=tests_pkg))
    assert "\n" not in str(err.value)


def test_objective_reports_an_external_term_by_its_key(tests_pkg):
    key = f"{tests_pkg}:SimilarityMSE"
    objective = build_objective({"clip": {}, key: {"weight": 0.5, "scale": 3.0}}, student_dim=10, teacher_dim=10)
    _, _, teacher = make_inputs()
    student = teacher.with_(image=teacher.image.clone().requires_grad_(), normalized=False)
    total, terms = objective(student, teacher)
    assert set(terms) == {"clip", key}
    assert terms[key].item() == pytest.approx(0.0, abs=1e-10)  # student == teacher
    assert total.item() == pytest.approx(terms["clip"].item() + 0.5 * terms[key].item(), rel=1e-6)
    assert objective.needs_teacher


def test_training_with_a_loss_defined_outside_the_package(tests_pkg, tmp_path):
    key = f"{tests_pkg}:SimilarityMSE"
    config_file = tmp_path / "external.yaml"
    config_file.write_text(yaml.safe_dump({
        "student": {"model": "tiny"}, "teacher": {"source": "openclip", "model": "tiny-teacher"},
        "data": {"kind": "synthetic", "num_samples": 32, "workers": 0},
        "losses": {"clip": {"weight": 1.0}, key: {"weight": 2.0, "scale": 3.0}},
        "train": {"steps": 2, "batch_size": 8, "log_every": 1, "save_every": 2, "progress": False},
        "eval": {"retrieval": "", "zero_shot": "", "fidelity": False},
    }))
    from clipdistill.train.loop import run

    run(config_lib.load(config_file), tmp_path / "run")
    lines = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2]
    for record in logged:
        assert record[key] > 0
        assert record["loss"] == pytest.approx(record["clip"] + 2.0 * record[key], rel=1e-4)
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert state["config"]["losses"][key] == {"weight": 2.0, "scale": 3.0}


def test_a_reloaded_loss_module_registers_again_without_complaint(tmp_path, monkeypatch):
    """Notebook autoreload redefines the same class under the same name: no error, the new class wins."""
    import importlib

    from clipdistill.losses import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry untouched
    (tmp_path / "reloadable_loss.py").write_text(textwrap.dedent('''
        from torch import nn
        from clipdistill.losses.registry import register

        @register("reloadable")
        class Reloadable(nn.Module):
            needs_teacher = False
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("reloadable_loss")
    first = losses.resolve("reloadable")
    importlib.reload(module)
    assert losses.resolve("reloadable") is module.Reloadable is not first
