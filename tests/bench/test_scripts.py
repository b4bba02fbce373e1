"""bench/cache_build.py, bench/eval_speed.py and bench/gpu_check.sh: small runs whose figures must add up,
and the GPU script's syntax, plan and refusals (the whole --cpu-smoke run takes minutes: see
docs/performance.md for the command)."""
import json
import subprocess

import pytest

from bench_scripts import BENCH, load_bench_script




@pytest.mark.parametrize("name", ["throughput", "cache_build", "eval_speed", "image_only_cifar10"])
def test_each_python_piece_of_the_gpu_script_answers_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_bench_script(name).main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_gpu_check_is_valid_bash_and_plans_every_part(tmp_path):
    script = BENCH / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"}
    gpu = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env)
    assert gpu.returncode == 0, gpu.stderr
    for part in ("install:", "bench/throughput.py --gpu --compile", "--teacher ViT-L-14", "--device cuda",
                 "--nproc_per_node 1", "train.local_loss=true", "student.model=ViT-B-16", "train.batch_size=256"):
        assert part in gpu.stdout, part
    limits = [int(line[1:line.index(" s]")]) for line in gpu.stdout.splitlines() if line.startswith("[")]
    assert len(limits) == 4 and sum(limits) <= 8 * 60  # the parts' time limits fit the 8 minutes
    smoke = subprocess.run(["bash", str(script), "--cpu-smoke", "--dry-run"], capture_output=True, text=True, env=env)
    assert smoke.returncode == 0 and "install:" not in smoke.stdout and "--quick" in smoke.stdout
    assert "tiny-teacher" in smoke.stdout and "--device cuda" not in smoke.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    wrong = subprocess.run(["bash", str(script), "--fast"], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and "unknown option --fast" in wrong.stderr


def test_cache_build_measures_the_writer_against_the_teachers_forward(tmp_path, capsys):
    cache_build = load_bench_script("cache_build")
    out = tmp_path / "cb.json"
    assert cache_build.main(["--synthetic", "24", "--image-px", "32", "--teacher", "tiny-teacher", "--workers", "0",
                             "--batch", "8", "--rounds", "1", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == 24 and result["image_entries"] == 24
    writer, limit = result["rows_per_s"]["writer"], result["rows_per_s"]["limit"]
    assert result["ratios"]["writer/limit"] == pytest.approx(writer / limit)
    shares = result["writer_time_shares"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["teacher_image_forward"] > 0 and shares["teacher_text_forward"] > 0 and shares["tokenize"] > 0
    # the writer calls the very forwards the limit times, plus more work: it cannot be much faster
    assert 0 < result["ratios"]["writer/limit"] < 1.5
    # and the instrumentation left the writer module as it found it
    from clipdistill.cache import writer as writer_module
    assert writer_module.write_shard.__module__ != "cache_build" and not hasattr(writer_module.write_shard, "__wrapped__")


def test_cache_build_refuses_prefetch_without_workers(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_bench_script("cache_build").main(["--synthetic", "8", "--workers", "0", "--prefetch", "4"])
    assert exit_.value.code == 2 and "--prefetch needs --workers" in capsys.readouterr().err


def test_eval_speed_times_both_on_the_same_data_and_they_agree(tmp_path):
    pytest.importorskip("clip_benchmark")
    eval_speed = load_bench_script("eval_speed")
    out = tmp_path / "es.json"
    assert eval_speed.main(["--images", "12", "--rounds", "1", "--batch", "16", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics_agree"] == {"retrieval": True, "zero_shot": True}
    rates = result["images_per_s"]
    name = "ours_retrieval/clip_benchmark_retrieval"
    assert result["ratios"][name] == pytest.approx(rates["ours_retrieval"] / rates["clip_benchmark_retrieval"])
    assert set(result["targets"]) == {name, "ours_zero_shot/clip_benchmark_zero_shot"}
    assert result["metrics"]["ours_retrieval"]["image_retrieval_recall@1"] == pytest.approx(
        result["metrics"]["clip_benchmark_retrieval"]["image_retrieval_recall@1"], abs=1e-4)


@pytest.mark.slow
def test_sharded_centres_bench_reports_each_ranks_share(tmp_path):
    """bench/sharded_centres.py at a toy size: 3 ranks, K = 1001 (334 + 334 + 333 rows)."""
    import os
    import sys

    out = tmp_path / "pfc.json"
    done = subprocess.run([sys.executable, str(BENCH / "sharded_centres.py"), "--classes", "1001", "--dim", "16",
                           "--ranks", "3", "--steps", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["rows"] for r in result["ranks_report"]] == [334, 334, 333]
    # shard, its gradient, two AdamW moments, the label centres' shard: 5 float32 copies of 334 x 16
    assert result["ranks_report"][0]["bytes"] == {"shard": 334 * 16 * 4, "grad": 334 * 16 * 4,
                                                  "optimizer": 2 * 334 * 16 * 4, "label_shard": 334 * 16 * 4}
    assert result["whole_bytes_per_rank_before_sharding"] == 5 * 1001 * 16 * 4
    assert result["largest_rank_share"] == pytest.approx(334 / 1001)
    assert result["losses_equal_on_every_rank"] and "K = 1001 x 16 on 3 ranks" in done.stdout
