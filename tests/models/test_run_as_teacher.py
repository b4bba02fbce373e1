"""A clipdistill run as a teacher (``teacher.source=checkpoint``, ``eval --model``): its directory or one of
its checkpoints; the architecture comes from the run's stored config, the weights from its student."""
import pytest
import torch
import torch.nn.functional as F

from clipdistill import cli
from clipdistill.errors import UserError
from clipdistill.models import build_student, load_teacher
from clipdistill.models.load_any import load_model

TINY_RUN = ["train.steps=2", "data.num_samples=32", "train.batch_size=8", "data.workers=0", "eval.retrieval=", "eval.zero_shot=",
            "train.progress=false", "train.log_every=1"]


def train(out, *overrides) -> int:
    """``clipdistill train`` of a tiny run into ``out`` (defaults from the schema: no YAML of its own)."""
    config = out.parent / "empty.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("{}\n")
    return cli.main(["train", str(config), "--out", str(out), *TINY_RUN, *overrides])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A 2-step run of the tiny-teacher preset; its directory."""
    out = tmp_path_factory.mktemp("teacher_run") / "run"
    assert train(out, "student.model=tiny-teacher") == 0
    return out


def _run_student(run_dir):
    """The run's student as the run left it, loaded by hand from its last checkpoint."""
    (checkpoint,) = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    state = torch.load(checkpoint, weights_only=True)
    student = build_student(state["config"]["student"]["model"])
    student.model.load_state_dict(state["student"])
    return student.model.eval(), checkpoint


def test_run_directory_as_teacher_embeds_as_the_run_student(teacher_run):
    student, checkpoint = _run_student(teacher_run)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    tokens = build_student("tiny-teacher").tokenizer(["a red circle", "two blue squares", "x", ""])
    with torch.no_grad():
        expected_image = F.normalize(student.encode_image(images), dim=-1)
        expected_text = F.normalize(student.encode_text(tokens), dim=-1)
        expected_scale = student.logit_scale.exp()
    for path in (teacher_run, checkpoint):  # the directory means its newest checkpoint
        teacher = load_teacher("checkpoint", path=str(path))  # no teacher.model: the run's config names it
        out = teacher(images, tokens)
        torch.testing.assert_close(out.image, expected_image)
        torch.testing.assert_close(out.text, expected_text)
        torch.testing.assert_close(out.logit_scale, expected_scale)
        assert teacher.identity["model"] == "tiny-teacher" and teacher.identity["path"] == str(checkpoint)
    # The same model through eval's loader (a run directory as --model, or openclip:ARCH:RUN_CHECKPOINT), and
    # as a student initialized from the run (student.pretrained=RUN_DIR).
    for spec in (str(teacher_run), f"openclip:tiny-teacher:{checkpoint}"):
        loaded = load_model(spec)
        with torch.no_grad():
            torch.testing.assert_close(F.normalize(loaded.encoder.encode_image(images), dim=-1), expected_image)
    inherited = build_student("tiny-teacher", pretrained=str(teacher_run)).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(inherited.encode_text(tokens), dim=-1), expected_text)


def test_distill_from_a_run_directory_on_the_command_line(teacher_run, tmp_path):
    out = tmp_path / "student"
    assert train(out, "student.model=tiny", "train.steps=1", "teacher.source=checkpoint", f"teacher.path={teacher_run}",
                 "losses.fd.weight=1.0") == 0
    assert (out / "results.json").is_file()


def test_a_different_teacher_model_is_one_line(teacher_run):
    with pytest.raises(UserError, match=r"teacher.model 'tiny' differs from the architecture run checkpoint "
                                        r".*step_\d+\.pt was trained with \('tiny-teacher'\)") as err:
        load_teacher("checkpoint", model="tiny", path=str(teacher_run))
    assert "\n" not in str(err.value)
    load_teacher("checkpoint", model="tiny-teacher", path=str(teacher_run))  # the same one, named, is fine


def test_run_directory_without_checkpoints_is_one_line(tmp_path, capsys):
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    (empty_run / "config.yaml").write_text("{}\n")
    with pytest.raises(UserError, match="without clipdistill run checkpoints") as err:
        load_teacher("checkpoint", path=str(empty_run))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="without clipdistill run checkpoints"):
        load_model(str(empty_run))
    assert train(tmp_path / "s", "student.model=tiny", "train.steps=1", "teacher.source=checkpoint",
                 f"teacher.path={empty_run}", "losses.fd.weight=1.0") == 2
    err = capsys.readouterr().err.strip()
    assert "without clipdistill run checkpoints" in err and "\n" not in err


def test_plain_weights_still_need_teacher_model(tmp_path):
    torch.save(build_student("tiny-teacher").model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(UserError, match="needs teacher.model .* for the plain weights file"):
        load_teacher("checkpoint", path=str(tmp_path / "weights.pt"))
