"""End to end (issue 19): a student distilled from two teachers of different architectures, live, then from
one ``clipdistill cache`` per teacher; the terms are logged per teacher and as a whole."""
import json
import shutil

import pytest
import torch
import yaml

from clipdistill import cli
from clipdistill.models import load_teacher
from clipdistill.train import checkpoint

pytestmark = pytest.mark.slow  # six CLI runs: ~2 minutes on 2 loaded cores

TEACHERS = {"vit": ("tiny-teacher", {}),
            "resnet": ("tiny-rn", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"})}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teachers")
    files = {}
    for seed, (name, (model, preprocess)) in enumerate(TEACHERS.items()):
        torch.manual_seed(seed)
        files[name] = directory / f"{name}.pt"
        torch.save(load_teacher("openclip", model=model, preprocess=preprocess).encoder.state_dict(), files[name])
    return files


def _section(name, path):
    model, preprocess = TEACHERS[name]
    return {"source": "checkpoint", "model": model, "path": str(path), "preprocess": preprocess}


def _config(tmp_path, name, **sections) -> str:
    config = {"student": {"model": "tiny"}, "data": {"kind": "synthetic", "num_samples": 48, "seed": 1, "workers": 0},
              "losses": {"clip": {}, "crd": {}, "fd": {"weight": 3.9}, "icl": {}},
              "train": {"steps": 3, "batch_size": 16, "log_every": 1, "save_every": 3, "progress": False},
              "eval": {"retrieval": "", "zero_shot": ""}, "cache": {"views": 2, "batch_size": 16}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_teachers_live_then_from_two_caches(tmp_path, teacher_files):
    sections = [_section(name, path) | {"weight": w} for (name, path), w in zip(teacher_files.items(), (2.0, 1.0))]
    live = _config(tmp_path, "live", teachers=sections)
    assert cli.main(["train", live, "--out", str(tmp_path / "live")]) == 0
    first = _logged(tmp_path / "live")[0]
    assert {"fd", "fd/t0", "fd/t1", "crd", "crd/t0", "crd/t1", "icl/t1"} <= set(first) and "clip/t0" not in first
    assert first["fd"] == pytest.approx((2 * first["fd/t0"] + first["fd/t1"]) / 3, rel=1e-5)

    caches = []
    for k, section in enumerate(sections):  # the existing command, once per teacher
        caches.append(tmp_path / f"cache{k}")
        assert cli.main(["cache", _config(tmp_path, f"cache{k}", teacher=section), "--out", str(caches[-1])]) == 0
    cached = _config(tmp_path, "cached", teachers=[{"source": "cache", "path": str(c), "weight": w}
                                                    for c, w in zip(caches, (2.0, 1.0))])
    assert cli.main(["train", cached, "--out", str(tmp_path / "cached"), "train.steps=4", "train.save_every=2"]) == 0
    steps = [s for s in _logged(tmp_path / "cached") if "loss" in s]
    assert len(steps) == 4 and all(s["fd/t1"] > 0 and s["crd/t0"] > 0 for s in steps)
    # The checkpoint holds FD's copy per teacher: a 64 -> 96 head for the ViT, none for the 64-wide ResNet
    # (the widths agree: CLIP-KD's rule), each with its own ICL scale.
    final = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "cached" / "checkpoints")[-1])
    assert final["objective"]["terms.fd.copies.0.project.image.weight"].shape == (96, 64)
    assert not any(key.startswith("terms.fd.copies.1.") for key in final["objective"])
    assert {"terms.icl.copies.0.cross_scale.log_scale", "terms.icl.copies.1.cross_scale.log_scale"} <= set(final["objective"])

    # Killed after step 2, resumed: the same weights and heads as the uninterrupted run.
    shutil.copytree(tmp_path / "cached", tmp_path / "resumed")
    checkpoint.list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].unlink()
    assert cli.main(["train", cached, "--out", str(tmp_path / "resumed"), "train.steps=4", "train.save_every=2",
                     "resume=latest"]) == 0
    resumed = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])
    assert resumed["step"] == final["step"] == 4
    for part in ("student", "objective"):
        for key, value in final[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
