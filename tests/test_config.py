import pytest
import yaml

from clipdistill import config as config_lib
from clipdistill.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_resolve(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\nlosses:\n  clip: {weight: 1.0}\n  fd: {weight: 3.9}\n")
    cfg = config_lib.load(path, ["train.steps=20", "optim.lr=0.01", "losses.crd.temperature=2", "student.model=RN50"])
    assert cfg.train.steps == 20 and cfg.optim.lr == 0.01
    assert cfg.losses == {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {"temperature": 2}}
    assert cfg.student.model == "RN50"


def test_inline_model_dict_and_int_for_float(tmp_path):
    path = write(tmp_path, "student:\n  model: {embed_dim: 64, vision_cfg: {width: 64}, text_cfg: {width: 64}}\n"
                           "optim:\n  lr: 1\n")
    cfg = config_lib.load(path)
    assert cfg.student.model["embed_dim"] == 64
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0


def test_unknown_key_named_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stesp' \(did you mean 'train.steps'\?\)"):
        config_lib.load(write(tmp_path, "train:\n  stesp: 3\n"))
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        config_lib.load(None, ["bogus=1"])


def test_exponent_without_dot_is_a_float(tmp_path):
    cfg = config_lib.load(write(tmp_path, "optim:\n  lr: 1e-3\n"), ["optim.eps=1e-8"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.eps == 1e-8


def test_wrong_type_named(tmp_path):
    with pytest.raises(ConfigError, match="'train.steps' expects int, got str 'many'"):
        config_lib.load(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="'train.progress' expects bool"):
        config_lib.load(None, ["train.progress=3"])
    with pytest.raises(ConfigError, match="'losses.fd.weight' expects float"):
        config_lib.load(None, ["losses.fd.weight=abc"])


def test_override_removes_loss_and_rejects_malformed():
    cfg = config_lib.load(None, ["losses.fd.weight=2", "losses.fd=null"])
    assert "fd" not in cfg.losses
    with pytest.raises(ConfigError, match="not of the form key=value"):
        config_lib.load(None, ["train.steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config_lib.load(write(tmp_path, "train: [unclosed\n"))


def test_yaml_is_never_code(tmp_path):
    # safe_load refuses python object tags instead of constructing them.
    with pytest.raises(ConfigError):
        config_lib.load(write(tmp_path, "train: !!python/object/apply:os.system ['echo hi']\n"))


def test_dump_round_trips(tmp_path):
    cfg = config_lib.load(None, ["train.steps=7", "losses.icl.weight=0.5"])
    config_lib.dump(cfg, tmp_path / "c.yaml")
    again = config_lib.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))
    assert configs, "no configs found"
    for path in configs:
        config_lib.load(path)
