"""`clipdistill cache` then `clipdistill train teacher.source=cache`, in-process through the CLI."""
import json

import pytest
import yaml

from clipdistill import build, cli
from clipdistill.cache import TeacherCache, read_manifest

CONFIG = {
    "student": {"model": "tiny"},
    "teacher": {"source": "openclip", "model": "tiny-teacher"},
    "data": {"kind": "synthetic", "num_samples": 24, "workers": 0},
    "losses": {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {}, "icl": {}},
    "train": {"steps": 3, "batch_size": 8, "log_every": 1, "save_every": 3, "progress": False},
    "eval": {"num_images": 10, "retrieval": "", "zero_shot": ""},
    "cache": {"views": 2, "shard_size": 10, "batch_size": 8},
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def cache_out(tmp_path_factory, config_file):
    out = tmp_path_factory.mktemp("cache")
    assert cli.main(["cache", str(config_file), "--out", str(out), "cache.dtype=bf16"]) == 0
    return out


def test_cache_command_writes_a_complete_cache(cache_out):
    manifest = read_manifest(cache_out)
    assert manifest["complete"] and manifest["count"] == 24 and manifest["num_shards"] == 3
    assert manifest["dtype"] == "bf16" and manifest["augmentation"]["views"] == 2
    assert manifest["teacher"]["model"] == "tiny-teacher" and manifest["dataset"]["num_samples"] == 24
    assert str(TeacherCache(cache_out).image.dtype) == "torch.bfloat16"


def test_training_from_the_cache_never_loads_a_teacher(tmp_path, cache_out, config_file, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("strict cache mode must not load a teacher")

    monkeypatch.setattr(build, "load_teacher", no_teacher)
    out = tmp_path / "run"
    assert cli.main(["train", str(config_file), "--out", str(out), "teacher.source=cache",
                     f"teacher.path={cache_out}"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "fd" in r]
    assert len(losses) == 3 and all(r["fd"] > 0 and r["crd"] >= 0 for r in losses)


def test_a_mismatching_cache_stops_the_cli_with_one_line(tmp_path, cache_out, config_file, capsys):
    code = cli.main(["train", str(config_file), "--out", str(tmp_path / "r"), "teacher.source=cache",
                     f"teacher.path={cache_out}", "data.scale=[0.5, 1.0]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("clipdistill train: error: teacher cache") and "augmentation.scale" in err[0]


def test_cache_command_needs_a_runnable_teacher(tmp_path, config_file, capsys):
    assert cli.main(["cache", str(config_file), "--out", str(tmp_path), "teacher.source=none"]) == 2
    assert "needs a teacher to run" in capsys.readouterr().err
