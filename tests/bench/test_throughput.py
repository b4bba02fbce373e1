"""bench/throughput.py end to end at a few steps: every configuration runs, and the JSON holds what the issue asks."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
KEYS = ("plain", "online_kd", "cached_kd", "open_clip_plain", "open_clip_distill")


def _bench_module():
    """bench/throughput.py as a module (it is a script, not in a package)."""
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    return throughput


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "t.json"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # 6 training runs in subprocess: ~40 s on a quiet 2-core machine, minutes on a busy one
def test_a_short_run_measures_every_configuration_and_its_ratios(tmp_path):
    done = _run(tmp_path, "--steps", "6", "--repeats", "1", "--workers", "0", "--threads", "1",
                "--plot", str(tmp_path / "t.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TorchDynamo" not in done.stderr  # open_clip_train left every logger at INFO
    result = json.loads((tmp_path / "t.json").read_text())
    for key in (*KEYS, "online_kd_bf16_teacher"):
        assert result[key] > 0 and result["per_round"][key] == [result[key]]
    assert result["ratios"]["cached_kd/plain"] == pytest.approx(result["cached_kd"] / result["plain"])
    assert result["ratios"]["online_kd/open_clip_distill"] == pytest.approx(
        result["online_kd"] / result["open_clip_distill"])
    # 64 x 6 samples cached: fp16 image and text embeddings of the 96-d tiny teacher (2 x 2 x 96 bytes),
    # plus views, index and keys; well under a kilobyte a sample.
    assert result["cache_samples"] == 384 and 384 < result["cache_bytes_per_sample"] < 1024
    assert result["machine"]["threads"] == 1 and (tmp_path / "t.png").stat().st_size > 0
    # the paired estimator: per-round ratios, their median, its interval, CPU time per step, the targets
    assert result["ratio_rounds"]["cached_kd/plain"] == [pytest.approx(result["ratios"]["cached_kd/plain"])]
    assert result["ratio_intervals"]["cached_kd/plain"]["rounds"] == 1
    for key in KEYS:
        assert 0 < result["cpu_ms_per_step"][key] < 60_000 and result["wall_ms_per_step"][key] > 0
    assert result["targets"]["cached_kd/plain"]["target"] == 0.97
    assert result["targets"]["cached_kd_compiled/open_clip_plain_compiled"]["met"] is None  # not asked for
    assert not (tmp_path / "t.json.partial").exists()


@pytest.mark.parametrize("args", [["--repeats", "0"], ["--steps", "4"], ["--threads", "0"], ["--workers", "-1"]])
def test_settings_that_cannot_measure_are_refused(tmp_path, args, capsys):
    throughput = _bench_module()
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--out", str(tmp_path / "t.json"), *args])
    assert exit_.value.code == 2 and "error: --" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


@pytest.mark.slow
def test_compiled_rows_run_or_are_skipped_with_a_note(tmp_path):
    """--compile: open_clip_train --torchcompile always; ours through train.compile where it exists (minutes)."""
    done = _run(tmp_path, "--steps", "6", "--repeats", "1", "--workers", "0", "--threads", "1", "--compile")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["open_clip_plain_compiled"] > 0 and result["compile_seconds"]["open_clip_plain_compiled"] > 0
    ours = ("plain_compiled", "cached_kd_compiled")
    if result["skipped"]:
        assert set(result["skipped"]) == set(ours) and "train.compile" in result["skipped"]["plain_compiled"]
        assert result["targets"]["cached_kd_compiled/open_clip_plain_compiled"]["met"] is None
    else:
        assert all(result[name] > 0 for name in ours)
        assert result["targets"]["cached_kd_compiled/open_clip_plain_compiled"]["median"] > 0


@pytest.mark.parametrize("kind", ["plain", "online_kd", "cached_kd"])
def test_our_runs_compute_with_the_benchs_threads(tmp_path, kind):
    """open_clip_train inherits the bench's torch threads; our loop must get the same count through train.threads
    (left to itself it takes every core: 2 threads next to the bench's worker on a 2-core machine, ~30 % slower)."""
    throughput = _bench_module()
    settings = {**throughput.QUICK, "threads": 3}
    cfg = throughput.our_config(settings, tmp_path / "pairs.tsv", tmp_path / "t.pt", kind, tmp_path / "cache")
    assert cfg.train.threads == 3


def test_the_trainers_compile_time_is_read_from_its_log_line(caplog, monkeypatch):
    """compile_reported_by_trainer: the figure of the loop's own line (a real first call, compiled by the eager
    backend), whatever the compiled part is called."""
    from clipdistill.train import compiling

    throughput = _bench_module()
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    with caplog.at_level("INFO", logger="clipdistill.train"):
        compiling.CompiledOrEager(lambda x: 2 * x, "the student")(torch.ones(2))
    found = dict(throughput._COMPILED_IN.findall(caplog.text))
    assert list(found) == ["the student"] and float(found["the student"]) >= 0
