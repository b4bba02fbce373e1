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


# ------------------------------------------------------------------------------------------- base:

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
ABLATIONS = ["afd", "affinity", "clipkd", "crd", "cross_kd", "fd", "gd", "icl", "mfd", "soft_clip"]


def test_shipped_configs_resolve_as_before_base_was_introduced():
    # The fixture holds config_lib.to_dict(load(...)) of every shipped YAML as it was before the ablations
    # were rewritten to name a `base:`: the rewrite must not change a single resolved value. (One value was
    # changed on purpose since, in the fixture too: configs/clipcid/synthetic.yaml's teacher.path names the
    # teacher run's directory, no longer a teacher.pt exported from it.)
    import json

    expected = json.loads((ROOT / "tests" / "fixtures" / "resolved_configs.json").read_text())
    for relative, resolved in expected.items():
        assert config_lib.to_dict(config_lib.load(ROOT / relative)) == resolved, relative


def test_each_ablation_states_only_its_losses():
    for name in ABLATIONS:
        data = yaml.safe_load((ROOT / "configs" / "clipkd" / f"{name}.yaml").read_text())
        assert set(data) == {"base", "losses"}, name
        assert "clip" not in data["losses"]  # the CLIP loss comes from baseline.yaml


def test_base_chain_merges_mappings_and_overrides_values(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "root.yaml").write_text(
        "train: {steps: 10, batch_size: 8}\nlosses: {clip: {weight: 1.0}}\nstudent: {model: {embed_dim: 64, "
        "vision_cfg: {width: 64, layers: 2}}}\n")
    (tmp_path / "common" / "middle.yaml").write_text(
        "base: root.yaml\ntrain: {steps: 20}\nlosses: {fd: {weight: 3.9}}\nstudent: {model: {vision_cfg: {layers: 4}}}\n")
    leaf = write(tmp_path, "base: common/middle.yaml\nlosses: {fd: {weight: 2.0}, crd: {weight: 1.0}}\n")
    cfg = config_lib.load(leaf, ["train.batch_size=4"])
    assert cfg.train.steps == 20 and cfg.train.batch_size == 4  # middle over root; the command line over all
    assert cfg.losses == {"clip": {"weight": 1.0}, "fd": {"weight": 2.0}, "crd": {"weight": 1.0}}
    assert cfg.student.model == {"embed_dim": 64, "vision_cfg": {"width": 64, "layers": 4}}
    # A non-mapping value replaces a mapping (a named architecture over an inline one).
    over = tmp_path / "named.yaml"
    over.write_text("base: common/root.yaml\nstudent: {model: RN50}\n")
    assert config_lib.load(over).student.model == "RN50"


def test_base_cycle_missing_and_malformed_are_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml") as err:
        config_lib.load(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config_lib.load(tmp_path / "self.yaml")
    with pytest.raises(ConfigError, match=r"base file .*nope.yaml was not found \(a base path is relative"):
        config_lib.load(write(tmp_path, "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match="'base' expects the path of another YAML file"):
        config_lib.load(write(tmp_path, "base: [a.yaml]\n"))


def test_base_in_the_cli_is_one_line(tmp_path, capsys):
    from clipdistill import cli

    assert cli.main(["train", str(write(tmp_path, "base: missing.yaml\n")), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.yaml was not found" in err and "\n" not in err


def test_off_on_yes_no_stay_strings_as_in_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1 rules read off/on/yes/no as booleans: `train.compile=off` stopped with a type error."""
    assert config_lib.load(None, ["train.compile=off"]).train.compile == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: off\ndata:\n  hflip: true\n")
    cfg = config_lib.load(path)
    assert cfg.train.compile == "off" and cfg.data.hflip is True
    assert [config_lib.parse_override(f"a={v}")[1] for v in ("yes", "no", "on", "true", "False")] == \
        ["yes", "no", "on", True, False]
    dumped = tmp_path / "resolved.yaml"
    config_lib.dump(cfg, dumped)
    assert config_lib.load(dumped).train.compile == "off"  # the run directory's config reads back the same
