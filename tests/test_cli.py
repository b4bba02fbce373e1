"""The command line a newcomer meets first: --version, the config schema, help that points to it."""
import dataclasses
from importlib import metadata

import pytest
import yaml

from clipdistill import __version__, cli
from clipdistill import config as config_lib
from clipdistill.config_schema import field_comments, schema_text


def test_version_names_this_package_and_what_it_runs_on(capsys):
    assert cli.main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"clipdistill {__version__} (open_clip {metadata.version('open_clip_torch')}, torch ")
    assert __version__ == metadata.version("clipdistill")  # pyproject and the package agree


def test_config_prints_every_key_with_its_default_as_loadable_yaml(capsys):
    assert cli.main(["config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # The printed defaults are the schema's defaults: fed back as a config, they change nothing.
    assert config_lib.from_dict(printed) == config_lib.Config()
    assert printed["data"]["separator"] == "auto" and printed["eval"]["retrieval"] == "auto"


def test_config_section_shows_the_comments_written_in_the_schema(capsys):
    assert cli.main(["config", "teacher"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "teacher:"
    assert "  source: none  # none | openclip | checkpoint | hf | cache" in out.splitlines()
    # A comment spread over the lines above a field is joined into its line.
    assert "precision: auto  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 (autocast on any device" in out
    assert "data:" not in out


def test_every_commented_field_gets_its_comment():
    comments = field_comments(config_lib.TrainConfig)
    assert comments["resume"] == '"" | latest | path to a checkpoint'
    assert set(comments) == {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    assert "train:\n  steps: 300\n" in schema_text("train")


def test_unknown_section_lists_the_sections(capsys):
    assert cli.main(["config", "dataa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("clipdistill config: error: no config section 'dataa' "
                   "(sections: student, teacher, data, losses, optim, train, eval, cache, teachers)")


@pytest.mark.parametrize("command", ["train", "cache"])
def test_help_points_to_the_config_listing(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "clipdistill config [SECTION]" in " ".join(capsys.readouterr().out.split())


def test_unknown_teacher_source_lists_every_choice():
    from clipdistill.errors import UserError
    from clipdistill.models import load_teacher

    with pytest.raises(UserError) as err:
        load_teacher("openclipp")
    assert "none, openclip, checkpoint, hf or cache" in str(err.value)
