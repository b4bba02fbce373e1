"""bench/ensemble.py and throughput.py's ensemble rows: the configurations they build are the ones they claim."""
from pathlib import Path

import pytest

from bench_scripts import load_bench_script
from clipdistill.config import teacher_sections


def test_throughput_builds_an_ensemble_of_the_first_n_caches():
    throughput = load_bench_script("throughput")
    settings = {**throughput.QUICK, "teachers": 3}
    caches = [Path(f"/c{k}") for k in range(1, 4)]
    config = throughput.our_config(settings, Path("d.tsv"), Path("t.pt"), "cached_kd_2t", caches)
    assert [t.path for t in teacher_sections(config)] == ["/c1", "/c2"] and config.losses == throughput.KD_LOSSES
    one = throughput.our_config(settings, Path("d.tsv"), Path("t.pt"), "cached_kd", caches)
    assert one.teachers is None and one.teacher.path == "/c1"
    assert throughput.ensemble_size("cached_kd_3t") == 3 and throughput.ensemble_size("cached_kd") == 1
    assert ("cached_kd_3t", "cached_kd") in throughput.RATIOS and ("cached_kd_2t", "plain") in throughput.RATIOS


def test_throughput_refuses_an_unknown_configuration(tmp_path):
    throughput = load_bench_script("throughput")
    with pytest.raises(SystemExit, match="unknown configuration 'cached_kd_4t'"):
        throughput.configurations({**throughput.QUICK, "teachers": 3, "configs": ["plain", "cached_kd_4t"]},
                                  tmp_path, tmp_path / "d.tsv", tmp_path / "t.pt", None, {})


def test_ensemble_bench_arms_and_summary():
    bench = load_bench_script("ensemble")
    caches = {"vit": {"source": "cache", "path": "/v"}, "resnet": {"source": "cache", "path": "/r"}}
    assert bench.arm_teachers("ensemble", caches) == {"teachers": [caches["vit"], caches["resnet"]]}
    assert bench.arm_teachers("resnet", caches) == {"teacher": caches["resnet"]}
    assert bench.needed(["vit"]) == ["vit"] and bench.needed(["ensemble"]) == ["vit", "resnet"]
    table = {"vit": {0: {"retrieval_mean_recall": 50.0}, 1: {"retrieval_mean_recall": 52.0}}}
    text = bench.summary(table, {"vit": {"metrics": {"retrieval_mean_recall": 0.66}}})
    assert "| teacher vit | 66.0 | |" in text and "| student from vit | **51.00 ± 1.41** | 50.0, 52.0 |" in text


def test_loss_cost_times_the_objective_for_each_teacher_count():
    costs = load_bench_script("ensemble").loss_cost(batch=8, rounds=2)
    assert set(costs) == {1, 2, 3} and all(ms > 0 for ms in costs.values())
