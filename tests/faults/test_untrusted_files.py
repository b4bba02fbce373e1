"""Files from elsewhere never run code: crafted pickles (teacher weights, resume checkpoints) and YAML."""
import os

import pytest
import torch

from clipdistill import cli, config as config_lib
from clipdistill.errors import UserError
from clipdistill.models.checkpoints import load_state_dict_file
from clipdistill.train import checkpoint


class _Payload:
    """Unpickling this calls os.system: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path, marker, wrap=dict):
    torch.save(wrap(step=1, student={"w": torch.zeros(2)}, payload=_Payload(marker)), path)
    return path


def test_teacher_weights_with_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UserError) as err:
        load_state_dict_file(crafted(tmp_path / "teacher.pt", marker))
    assert "refusing to load checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_resume_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UserError) as err:
        checkpoint.load(crafted(tmp_path / "step_00000001.pt", marker))
    message = str(err.value)
    assert message.startswith("refusing to load checkpoint") and "system" in message  # names the global
    assert "\n" not in message and "weights_only=False" not in message
    assert not marker.exists()


def test_cli_refuses_both_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "c.yaml"
    config.write_text("train: {progress: false}\n")
    runs = tmp_path / "runs"
    (runs / "checkpoints").mkdir(parents=True)
    crafted(runs / "checkpoints" / "step_00000003.pt", marker)
    teacher = crafted(tmp_path / "teacher.pt", marker)
    common = ["train", str(config), "student.model=tiny", "data.num_samples=16", "train.batch_size=8",
              "data.workers=0", "eval.retrieval=", "eval.zero_shot="]
    assert cli.main([*common, "--out", str(runs), "train.resume=" + str(runs / "checkpoints" / "step_00000003.pt")]) == 2
    assert "refusing to load checkpoint" in capsys.readouterr().err
    assert cli.main([*common, "--out", str(tmp_path / "kd"), "teacher.source=checkpoint", "teacher.model=tiny",
                     f"teacher.path={teacher}", "losses.fd.weight=1.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to load checkpoint" in err and "\n" not in err
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "train: !!python/object/apply:os.system ['touch {marker}']\n",
    "train: {steps: !!python/object/new:int [3]}\n",
    "!!python/name:os.system\n",
])
def test_yaml_tags_that_build_objects_are_refused(tmp_path, text):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(UserError, match="invalid YAML"):
        config_lib.load(path)
    with pytest.raises(UserError):
        config_lib.load(None, [f"train.resume=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_config_strings_stay_strings(tmp_path):
    cfg = config_lib.load(None, ["train.resume=__import__('os').system('touch x')", "student.model=${HOME}"])
    assert cfg.train.resume == "__import__('os').system('touch x')" and cfg.student.model == "${HOME}"
