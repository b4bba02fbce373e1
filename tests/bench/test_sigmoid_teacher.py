"""bench/sigmoid_teacher.py: the teacher trains with siglip; the students keep clip and add one KD term each.

Training is faked (as in test_ablation.py): what is tested is the configs the script asks for.
"""
import json

from bench_scripts import load_bench_script


def test_the_teacher_is_sigmoid_and_each_student_differs_only_by_its_kd_term(monkeypatch, tmp_path):
    script = load_bench_script("sigmoid_teacher")
    ablation = script.ablation
    seen = {"teacher": None, "runs": {}}

    def train_teacher(setup, out, progress):
        seen["teacher"] = ablation.merged(ablation.BASE, setup["common"], setup["teacher"])
        return {"teacher": {"source": "checkpoint", "path": str(out / "teacher")}}, fake_results(0.5)

    def cached_teacher(setup, out, teacher, views, progress):
        (out / "teacher_cache").mkdir(parents=True)
        (out / "teacher_cache" / "manifest.json").write_text(json.dumps({"logit_scale": 12.0, "logit_bias": -9.0}))
        return {"teacher": {"source": "cache", "path": str(out / "teacher_cache")}}

    def run(cfg, run_dir, overwrite=False):
        seen["runs"][str(run_dir.relative_to(tmp_path))] = (cfg.losses, cfg.teacher.source, cfg.train.seed)
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(fake_results(0.3)))
        return fake_results(0.3)

    def fake_results(value):
        return {"metrics": {"retrieval_mean_recall": value, **{k: value for k in ablation.RECALLS}}, "seconds": 1.0}

    for name, fake in (("train_teacher", train_teacher), ("cached_teacher", cached_teacher), ("run", run)):
        monkeypatch.setattr(ablation, name, fake)
    # The baseline needs no teacher: the ablation's finished runs are linked in and reused.
    (tmp_path / "elsewhere" / "baseline").mkdir(parents=True)
    (tmp_path / "elsewhere" / "baseline" / "results.json").write_text(json.dumps(fake_results(0.2)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "baseline").symlink_to(tmp_path / "elsewhere" / "baseline")

    script.main(["--out", str(tmp_path / "out"), "--seeds", "0,1", "--teacher-steps", "7",
                 "--methods", "baseline,sigmoid_kd,clipkd"])
    assert seen["teacher"]["losses"] == {"siglip": {"weight": 1.0}} and seen["teacher"]["train"]["steps"] == 7
    assert sorted(seen["runs"]) == ["out/clipkd", "out/seed1/baseline", "out/seed1/clipkd", "out/seed1/sigmoid_kd",
                                    "out/sigmoid_kd"]
    losses, source, seed = seen["runs"]["out/seed1/sigmoid_kd"]
    assert losses == {"clip": {"weight": 1.0}, "sigmoid_kd": {"weight": 1.0}} and source == "cache" and seed == 1
    assert sorted(seen["runs"]["out/clipkd"][0]) == ["clip", "crd", "fd", "icl"]
    assert seen["runs"]["out/seed1/baseline"][1] == "none"  # no KD: no teacher
    table = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert table["baseline"]["seeds"]["0"]["retrieval_mean_recall"] == 20.0  # the linked run, not retrained
    assert table["baseline"]["retrieval_mean_recall"] == 25.0


def test_the_sigmoid_student_rows_swap_clip_for_siglip():
    methods = load_bench_script("sigmoid_teacher").METHODS
    assert methods["siglip"] == {"siglip": {"weight": 1.0}}
    assert methods["siglip_sigmoid_kd"] == {"siglip": {"weight": 1.0}, "sigmoid_kd": {"weight": 1.0}}
    assert methods["sigmoid_kd_w0.01"] == {"clip": {"weight": 1.0}, "sigmoid_kd": {"weight": 0.01}}
