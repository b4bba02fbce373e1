"""bench/inherit_vs_random.py: the arms it trains (faked, as in test_ablation.py), reuse, and its report."""
import json

import pytest

from bench_scripts import load_bench_script


def test_each_arm_trains_once_per_seed_with_its_init_and_steps(monkeypatch, tmp_path):
    script = load_bench_script("inherit_vs_random")
    ablation = script.ablation
    runs = []

    def flickr_setup(out, args):
        return {"common": {"data": {"kind": "synthetic", "num_samples": 8}}, "student": {"data": {"subset": 0}}}

    def inherit_student(teacher_run, out):
        (out / "inherited_init").mkdir(parents=True, exist_ok=True)
        return out / "inherited_init"

    def run(cfg, run_dir, overwrite=False):
        runs.append((run_dir.name, cfg.student.pretrained, cfg.train.steps, cfg.train.seed, sorted(cfg.losses)))
        value = (0.04 if cfg.student.pretrained else 0.03) + 0.001 * cfg.train.steps / 100 + 0.001 * cfg.train.seed
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"metrics": {"retrieval_mean_recall": value}}))
        return {"metrics": {"retrieval_mean_recall": value}}

    monkeypatch.setattr(ablation, "flickr_setup", flickr_setup)
    monkeypatch.setattr(ablation, "run", run)
    monkeypatch.setattr(script, "inherit_student", inherit_student)
    command = ["--out", str(tmp_path), "--teacher-run", str(tmp_path / "t"), "--steps", "300",
               "--catch-up", "600", "--seeds", "0,1"]
    script.main(command)
    assert [(name, steps, seed) for name, _, steps, seed, _ in runs] == [
        ("inherited_seed0", 300, 0), ("random_seed0", 300, 0), ("random_600steps_seed0", 600, 0),
        ("inherited_seed1", 300, 1), ("random_seed1", 300, 1), ("random_600steps_seed1", 600, 1)]
    assert runs[0][1].endswith("inherited_init/open_clip_model.safetensors") and runs[1][1] == ""
    assert all(losses == ["clip"] for *_, losses in runs)
    report = json.loads((tmp_path / "inherit.json").read_text())
    assert report["inherited"]["mean"] == pytest.approx(4.35)
    assert report["random_600steps"]["seeds"]["1"] == pytest.approx(3.7)
    assert "| random_600steps | 600 | 2 | **3.65 ± 0.07** |" in (tmp_path / "inherit.md").read_text()
    runs.clear()
    script.main(command)  # rerun: every finished arm is reused
    assert runs == []
