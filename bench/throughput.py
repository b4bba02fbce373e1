"""Training throughput: our loop (plain, online KD, cached KD) against open_clip_train (plain, --distill-model).

    python bench/throughput.py --quick --out runs/throughput.json    # CPU, tiny models (the default; < 5 min)
    python bench/throughput.py --quick --compile --out runs/tp.json  # + torch.compile rows (minutes of compiling)
    python bench/throughput.py --gpu --compile --out runs/throughput_gpu.json  # ViT-L/14 -> ViT-B/16, batch 256

One process, one dataset (a CSV of PNG files both trainers read), the same student, batch size, number
of steps, DataLoader workers, intra-op threads and gradient clipping (global norm 1.0, our default) for
every configuration. Quick mode gives loading and compute a core each (1 worker, cores - 1 threads):
more busy threads than cores measures the scheduler, not the trainers.

The estimator is built for a shared machine. Configurations run in *paired rounds*: each round runs every
configuration back to back, the order rotated by one each round (so each configuration takes every place
in a round in turn, first or last when the load changes). A ratio (``cached_kd/plain``...) is computed inside each round, where both sides saw about the
same machine load, and judged on the median over rounds; ``ratio_intervals`` gives a distribution-free
interval for that median (order statistics of the per-round ratios, the sign-test interval: the narrowest
whose coverage is at least 90 %, its exact coverage reported; with fewer than 5 rounds no such interval
exists and min..max is given with its lower coverage). samples/s counts steady-state steps only (the
first ``warmup`` steps of each run are dropped; batch / median step time, so a step stalled by another
process does not count) and includes data-loading waits, for us and for open_clip alike: per-step times
come from our metrics.jsonl (log_every=1) and from open_clip's own log (``--log-every-n-steps 1``, its
"Batch (t)" per-step time). CPU time per step is the training process's CPU time (all its threads,
``time.process_time``; DataLoader workers are other processes) between consecutive logged steps, median
after warm-up, read by a hook on each trainer's per-step logging.

``--teachers N`` adds ``cached_kd_2t`` ... ``cached_kd_Nt``: the same KD recipe from an ensemble of 2 ... N
cached teachers (``teachers:``; tiny teachers of other random weights, one ``clipdistill cache`` each over
the same data and views), with their ratios to ``plain`` and to ``cached_kd`` (one cached teacher) and
each cache's bytes per sample (``cache_bytes_per_sample_per_teacher``). ``--configs`` runs a subset.

``--compile`` adds ``plain_compiled`` and ``cached_kd_compiled`` (our loop with the config override
``train.compile=student``, or ``--compile-mode all``) and ``open_clip_plain_compiled`` (open_clip_train
``--torchcompile``). Compile time does not count in samples/s (it falls in the warm-up steps);
``compile_seconds`` is how much longer a compiled run's warm-up steps took than its uncompiled twin's.
Where the installed clipdistill does not know ``train.compile`` yet, our compiled rows are skipped with
a note in the JSON (``skipped``) and the open_clip one still runs. A configuration that raises is dropped
from every round with its one-line error under ``failed``; the others carry on.

Online KD = clip + fd + crd + icl (the CLIP-KD recipe); quick mode also runs it with our teacher alone in
bf16 (``online_kd_bf16_teacher``). open_clip's distillation is its
DistillClipLoss (clip + soft cross-entropy to the teacher's logits) with the teacher run on the same
images. Weights are random: throughput does not depend on them. Writes ``--out`` JSON with keys
plain, online_kd, cached_kd, open_clip_plain, open_clip_distill (samples/s, median over rounds),
``per_round``, ``cpu_ms_per_step``, ``wall_ms_per_step``, ``ratios`` (median of per-round ratios),
``ratio_rounds``, ``ratio_intervals``, ``cpu_ratios`` (the same ratios from CPU time per step), ``targets`` (each target ratio, its median, interval and verdict),
cache_bytes_per_sample and the settings; ``--plot`` writes a bar chart.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipdistill import config as config_lib
from clipdistill.cache import write_cache
from clipdistill.data import CsvPairs, SyntheticPairs
from clipdistill.errors import ConfigError
from clipdistill.models import load_teacher, resolve_architecture
from clipdistill.train import loop as loop_module

QUICK = {"student": "tiny", "teacher": "tiny-teacher", "batch": 64, "steps": 30, "warmup": 4, "workers": 1,
         "device": "cpu", "precision": "fp32", "image_px": 64, "repeats": 5}
GPU = {"student": "ViT-B-16", "teacher": "ViT-L-14", "batch": 256, "steps": 40, "warmup": 8, "workers": 8,
       "device": "cuda", "precision": "bf16", "image_px": 128, "repeats": 2}
KD_LOSSES = {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {"weight": 1.0}, "icl": {"weight": 1.0}}
NAMES = ("plain", "online_kd", "cached_kd", "open_clip_plain", "open_clip_distill")
COMPILED = ("plain_compiled", "cached_kd_compiled", "open_clip_plain_compiled")
# Quick mode also runs our online KD with the teacher alone in bf16 (teacher.precision=bf16, the student
# in fp32): open_clip has one precision for both models. In GPU mode both teachers already run in bf16.
BF16_TEACHER = "online_kd_bf16_teacher"
# The ratios reported (numerator, denominator), and the targets among them (judged on the median).
RATIOS = (("cached_kd", "plain"), ("plain", "open_clip_plain"), ("online_kd", "open_clip_distill"),
          ("online_kd", "plain"), (BF16_TEACHER, "open_clip_distill"),
          ("cached_kd_compiled", "open_clip_plain_compiled"), ("plain_compiled", "open_clip_plain_compiled"),
          ("plain_compiled", "plain"), ("cached_kd_compiled", "cached_kd"),
          ("open_clip_plain_compiled", "open_clip_plain"), ("cached_kd_compiled", "plain_compiled"),
          *((f"cached_kd_{n}t", base) for n in range(2, 9) for base in ("plain", "cached_kd")))
TARGETS = {"cpu": {"cached_kd/plain": 0.97, "cached_kd_compiled/open_clip_plain_compiled": 1.0},
           "cuda": {"cached_kd/plain": 0.95, "online_kd/open_clip_distill": 1.25,
                    "cached_kd_compiled/open_clip_plain_compiled": 1.0}}
INTERVAL_LEVEL = 0.90


# ----------------------------------------------------------------------------- shared inputs

def write_csv_dataset(directory: Path, num_samples: int, image_px: int) -> Path:
    """PNG files of the procedural dataset and a TSV of absolute paths (open_clip reads paths as given)."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = SyntheticPairs(num_samples, seed=0, image_size=image_px)
    rows = ["filepath\ttitle"]
    for i in range(num_samples):
        sample = pairs[i]
        path = directory / f"{i:06d}.png"
        sample["image"].save(path)
        rows.append(f"{path.resolve()}\t{sample['caption']}")
    csv = directory / "pairs.tsv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def write_teacher_weights(model: str, path: Path, seed: int = 0) -> Path:
    """Random teacher weights in a file: open_clip's --distill-pretrained needs one, our checkpoint source too."""
    torch.manual_seed(seed)
    teacher = load_teacher("openclip", model=model)
    torch.save(teacher.encoder.state_dict(), path)
    return path


# ----------------------------------------------------------------------------- timing one run

class StepClock:
    """Wall and CPU time of this process at each logged step, taken by a hook on the trainer's logging."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def cpu_seconds_per_step(self, warmup: int) -> float | None:
        """Median CPU seconds between consecutive steps after warm-up (None when the hook saw too few steps)."""
        cpu = [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])][warmup:]
        return statistics.median(cpu) if cpu else None


def steady_rate(step_seconds: list[float], batch: int, warmup: int) -> float:
    """batch / median step time after warm-up: the median ignores steps stalled by other processes."""
    kept = step_seconds[warmup:]
    if not kept:
        raise RuntimeError(f"no steps after {warmup} warm-up steps (got {len(step_seconds)})")
    return batch / statistics.median(kept)


def timing(step_seconds: list[float], clock: StepClock, batch: int, warmup: int) -> dict:
    """One run's figures: samples/s and ms per step after warm-up, CPU ms per step, and the seconds the
    warm-up steps took beyond steady-state steps (first batch, worker start-up, and compiling if any)."""
    rate = steady_rate(step_seconds, batch, warmup)
    step = batch / rate
    cpu = clock.cpu_seconds_per_step(warmup)
    return {"rate": rate, "wall_ms": 1e3 * step, "cpu_ms": None if cpu is None else 1e3 * cpu,
            "warmup_excess_s": sum(step_seconds[:warmup]) - warmup * step}


# ----------------------------------------------------------------------------- our loop

def ensemble_size(kind: str) -> int:
    """How many cached teachers a ``cached_kd_{N}t`` configuration distills from (1 for any other)."""
    match = re.fullmatch(r"cached_kd_(\d+)t", kind)
    return int(match.group(1)) if match else 1


def our_config(s: dict, csv: Path, teacher_file: Path, kind: str, cache_dir: Path | list[Path] | None,
               compile_mode: str | None = None) -> config_lib.Config:
    """``cache_dir``: the cache of cached_kd, or every teacher's cache (the first N serve cached_kd_{N}t)."""
    caches = cache_dir if isinstance(cache_dir, list) else [cache_dir]
    teacher = {"source": "none"}
    if kind in ("online_kd", BF16_TEACHER):
        precision = "bf16" if kind == BF16_TEACHER else s["precision"]
        teacher = {"source": "checkpoint", "model": s["teacher"], "path": str(teacher_file), "precision": precision}
    if kind == "cached_kd":
        teacher = {"source": "cache", "path": str(caches[0])}
    teachers = {"teachers": [{"source": "cache", "path": str(c)} for c in caches[:ensemble_size(kind)]]} \
        if ensemble_size(kind) > 1 else {"teacher": teacher}
    data = {
        "student": {"model": s["student"]}, **teachers,
        "data": {"kind": "csv", "path": str(csv), "workers": s["workers"]},
        "losses": {"clip": {"weight": 1.0}} if kind == "plain" else KD_LOSSES,
        "optim": {"warmup_steps": 2},
        # train.threads: the bench's own thread count, which open_clip_train inherits; our loop would
        # otherwise choose its own (every core on a 2-core machine, next to the bench's worker).
        "train": {"steps": s["steps"], "batch_size": s["batch"], "log_every": 1, "save_every": 10**9,
                  "precision": s["precision"], "progress": False, "threads": s.get("threads", 0)},
        "eval": {"retrieval": "", "zero_shot": ""},
    }
    # As a user would: a dotted override, validated by the same schema (unknown key -> ConfigError).
    overrides = [f"train.compile={compile_mode}"] if compile_mode else []
    return config_lib.from_dict(config_lib.apply_overrides(data, overrides))


def compile_support(mode: str) -> str | None:
    """None when this clipdistill accepts ``train.compile=mode``, else why not (the ConfigError's line)."""
    try:
        config_lib.from_dict(config_lib.apply_overrides({}, [f"train.compile={mode}"]))
    except ConfigError as err:
        return str(err)
    return None


@contextlib.contextmanager
def clocked_steps(clock: StepClock):
    """Mark the clock after each of our loop's logged steps (log_step ends with a device sync)."""
    original = getattr(loop_module, "log_step", None)
    if original is None:  # the loop changed shape: wall time still comes from metrics.jsonl
        yield
        return

    def log_step(*args, **kwargs):
        values = original(*args, **kwargs)
        clock.mark()
        return values

    loop_module.log_step = log_step
    try:
        yield
    finally:
        loop_module.log_step = original


def run_ours(cfg: config_lib.Config, out_dir: Path, warmup: int) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    torch._dynamo.reset()  # a fresh compile per run: dynamo's per-function recompile limit would fall back to eager
    clock = StepClock()
    library_log = logging.getLogger("clipdistill")
    level = library_log.level
    library_log.setLevel(logging.INFO)  # train.log gets the loop's INFO lines (its compile time) as under the CLI
    try:
        with clocked_steps(clock):
            loop_module.run(cfg, out_dir)
    finally:
        library_log.setLevel(level)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [cfg.train.batch_size / r["samples_per_s"] for r in rows if "samples_per_s" in r]
    figures = timing(seconds, clock, cfg.train.batch_size, warmup)
    # The trainer's own figure, where it logs one ("train.compile: student compiled in 12.3 s (first call)").
    log = out_dir / "train.log"
    reported = {part: float(s) for part, s in _COMPILED_IN.findall(log.read_text())} if log.exists() else {}
    return {**figures, **({"reported": reported} if reported else {})}


_COMPILED_IN = re.compile(r"train\.compile: (.+?) compiled in ([0-9.]+) s")  # "the student", "the objective"


# ----------------------------------------------------------------------------- open_clip_train

_BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+),")


class _StepLogHandler(logging.Handler):
    """Marks the clock at each of open_clip_train's per-step "Train Epoch" log lines."""

    def __init__(self, clock: StepClock):
        super().__init__()
        self.clock = clock

    def emit(self, record):
        if str(record.msg).startswith("Train Epoch"):
            self.clock.mark()


def run_open_clip(s: dict, csv: Path, logs: Path, name: str, teacher_file: Path | None,
                  compile_model: bool = False) -> dict:
    """open_clip_train.main.main in this process; our presets are registered with open_clip already."""
    from open_clip_train.main import main as open_clip_main

    argv = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", resolve_architecture(s["student"]),
            "--batch-size", str(s["batch"]), "--epochs", "1", "--workers", str(s["workers"]), "--lr", "5e-4",
            "--warmup", "2", "--log-every-n-steps", "1", "--logs", str(logs), "--name", name,
            "--device", s["device"], "--precision", "fp32" if s["precision"] == "fp32" else "amp_bf16",
            "--save-frequency", "0", "--seed", "0",
            # Like for like: our loop clips the global grad norm at optim.grad_clip by default (one more
            # pass over every gradient per step); open_clip clips only when asked.
            "--grad-clip-norm", str(config_lib.OptimConfig().grad_clip)]
    if teacher_file is not None:
        argv += ["--distill-model", resolve_architecture(s["teacher"]), "--distill-pretrained", str(teacher_file)]
    if compile_model:
        argv.append("--torchcompile")
    shutil.rmtree(logs / name, ignore_errors=True)
    torch._dynamo.reset()
    clock = StepClock()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # open_clip_train's setup_logging sets every logger that exists to INFO (torch's print their
    # compile statistics at exit then): put each back.
    levels = {logger: logging.getLogger(logger).level for logger in list(logging.root.manager.loggerDict)}
    step_handler = _StepLogHandler(clock)
    root.addHandler(step_handler)
    try:
        if open_clip_main(argv) == -1:
            raise RuntimeError(f"open_clip_train refused to run: {argv}")
    finally:
        root.removeHandler(step_handler)
        for handler in root.handlers[len(handlers):]:  # it adds a file and a stream handler per call
            root.removeHandler(handler)
        root.setLevel(level)
        for logger in list(logging.root.manager.loggerDict):
            logging.getLogger(logger).setLevel(levels.get(logger, logging.NOTSET))
    text = (logs / name / "out.log").read_text()
    return timing([float(t) for t in _BATCH_TIME.findall(text)], clock, s["batch"], s["warmup"])


# ----------------------------------------------------------------------------- the estimator

def rotated(names: list[str], round_: int) -> list[str]:
    """Round r runs the configurations starting at the r-th: over len(names) rounds each takes every place once."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def median_interval(values: list[float], level: float = INTERVAL_LEVEL) -> dict:
    """Distribution-free interval for the median of ``values``: the order statistics x_(k) and x_(n+1-k)
    with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is still >= level (the sign-test
    interval). Below 5 values no k reaches 90 %: min..max then, with its (lower) coverage."""
    xs, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return {"low": xs[k - 1], "high": xs[n - k], "coverage": coverage(k), "rounds": n}


def paired_ratios(per_round: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each ratio of RATIOS whose two sides ran, computed within each round."""
    return {f"{a}/{b}": [x / y for x, y in zip(per_round[a], per_round[b])]
            for a, b in RATIOS if a in per_round and b in per_round}


def paired_cpu_ratios(cpu_rounds: dict[str, list]) -> dict[str, list[float]]:
    """The same ratios from CPU time per step (a/b = CPU ms of b / CPU ms of a): what the speed ratio would be
    if each side had the CPU to itself. Less sensitive than wall time to waiting for a busy machine's cores."""
    return {f"{a}/{b}": [y / x for x, y in zip(cpu_rounds[a], cpu_rounds[b])]
            for a, b in RATIOS if a in cpu_rounds and b in cpu_rounds
            and None not in cpu_rounds[a] and None not in cpu_rounds[b]}


def judge(ratio_rounds: dict[str, list[float]], targets: dict[str, float]) -> dict:
    """Each target on the median of its per-round ratios; the interval says how sure that is."""
    out = {}
    for name, target in targets.items():
        if name not in ratio_rounds:
            out[name] = {"target": target, "met": None, "why": "not measured (a side was skipped or failed)"}
            continue
        median = statistics.median(ratio_rounds[name])
        interval = median_interval(ratio_rounds[name])
        out[name] = {"target": target, "median": median, "interval": interval, "met": median >= target,
                     "interval_above_target": interval["low"] >= target}
    return out


# ----------------------------------------------------------------------------- the benchmark

def build_cache(s: dict, csv: Path, teacher_file: Path, out: Path) -> tuple[float, float]:
    """The teacher cache of the dataset; returns (bytes per sample, seconds to build)."""
    teacher = load_teacher("checkpoint", model=s["teacher"], path=str(teacher_file), device=s["device"],
                           precision=s["precision"])
    started = time.time()
    manifest = write_cache(CsvPairs(csv), teacher, out, dataset_info={"kind": "csv", "path": str(csv)},
                           workers=s["workers"], batch_size=s["batch"], progress=False)
    seconds = time.time() - started
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return size / manifest["count"], seconds


def teacher_caches(work: Path, teachers: int) -> list[Path]:
    """Each teacher's cache directory: teacher 1's is cached_kd's."""
    return [work / "cache"] + [work / f"cache{k}" for k in range(2, teachers + 1)]


def configurations(s: dict, work: Path, csv: Path, teacher_file: Path, compile_mode: str | None,
                   skipped: dict) -> dict:
    """name -> a function that runs that configuration once and returns its timing()."""
    def ours(kind, name, mode=None):
        cache = teacher_caches(work, s.get("teachers", 1)) if kind.startswith("cached_kd") else None
        return lambda: run_ours(our_config(s, csv, teacher_file, kind, cache, mode), work / name, s["warmup"])

    runs = {"plain": ours("plain", "plain"), "online_kd": ours("online_kd", "online"),
            "cached_kd": ours("cached_kd", "cached"),
            "open_clip_plain": lambda: run_open_clip(s, csv, work / "oc", "plain", None),
            "open_clip_distill": lambda: run_open_clip(s, csv, work / "oc", "distill", teacher_file)}
    if s["device"] == "cpu":
        runs[BF16_TEACHER] = ours(BF16_TEACHER, "online_bf16")
    for n in range(2, s.get("teachers", 1) + 1):
        runs[f"cached_kd_{n}t"] = ours(f"cached_kd_{n}t", f"cached_{n}t")
    if compile_mode:
        unsupported = compile_support(compile_mode)
        if unsupported:
            for name in ("plain_compiled", "cached_kd_compiled"):
                skipped[name] = f"this clipdistill cannot compile: {unsupported}"
        else:
            runs["plain_compiled"] = ours("plain", "plain_compiled", compile_mode)
            runs["cached_kd_compiled"] = ours("cached_kd", "cached_compiled", compile_mode)
        runs["open_clip_plain_compiled"] = lambda: run_open_clip(s, csv, work / "oc", "plain_compiled", None,
                                                                 compile_model=True)
    unknown = [name for name in s.get("configs") or [] if name not in runs]
    if unknown:
        raise SystemExit(f"unknown configuration '{unknown[0]}' (here: {', '.join(runs)})")
    return {name: run for name, run in runs.items() if not s.get("configs") or name in s["configs"]}


def measure(s: dict, work: Path, compile_mode: str | None = None, partial: Path | None = None) -> dict:
    # Enough samples for every configuration to run its steps inside one epoch (open_clip trains 1 epoch).
    csv = write_csv_dataset(work / "data", s["batch"] * s["steps"], s["image_px"])
    teacher_file = write_teacher_weights(s["teacher"], work / "teacher.pt")
    bytes_per_sample, cache_seconds = build_cache(s, csv, teacher_file, work / "cache")
    per_teacher = [bytes_per_sample]
    for k, cache in enumerate(teacher_caches(work, s.get("teachers", 1))[1:], start=2):  # the ensemble's other teachers
        per_teacher.append(build_cache(s, csv, write_teacher_weights(s["teacher"], work / f"teacher{k}.pt", seed=k),
                                       cache)[0])
    skipped: dict[str, str] = {}
    runs = configurations(s, work, csv, teacher_file, compile_mode, skipped)
    figures = {name: [] for name in runs}
    failed: dict[str, str] = {}
    for round_ in range(s["repeats"]):
        for name in rotated(list(runs), round_):
            if name in failed:
                continue
            try:
                figures[name].append(runs[name]())
            except Exception as err:  # noqa: BLE001 -- one configuration's crash is a finding, not the end of the bench
                failed[name] = f"round {round_ + 1}: {type(err).__name__}: {err}"
                print(f"round {round_ + 1}/{s['repeats']} {name:<24} FAILED: {failed[name]}", flush=True)
                continue
            f = figures[name][-1]
            cpu = "" if f["cpu_ms"] is None else f", {f['cpu_ms']:.1f} CPU ms/step"
            print(f"round {round_ + 1}/{s['repeats']} {name:<24} {f['rate']:9.1f} samples/s{cpu}", flush=True)
            if partial is not None:  # what a run stopped by a time limit had measured (bench/gpu_check.sh)
                partial.write_text(json.dumps({"complete": False, "settings": s, "figures": figures}, indent=2))
    figures = {name: values for name, values in figures.items() if name not in failed}  # rounds stay paired
    per_round = {name: [f["rate"] for f in values] for name, values in figures.items()}
    result = {name: statistics.median(values) for name, values in per_round.items()}
    # Other jobs on a shared machine only ever slow a run down, so each configuration's fastest round is
    # the least disturbed estimate (timeit's reasoning); reported next to the median, not instead of it.
    result["best"] = {name: max(values) for name, values in per_round.items()}
    result["wall_ms_per_step"] = {name: statistics.median(f["wall_ms"] for f in values) for name, values in figures.items()}
    result["cpu_ms_per_round"] = {name: [f["cpu_ms"] for f in values] for name, values in figures.items()}
    result["cpu_ms_per_step"] = {name: _median_or_none([f["cpu_ms"] for f in values]) for name, values in figures.items()}
    result["warmup_excess_seconds"] = {name: statistics.median(f["warmup_excess_s"] for f in values)
                                       for name, values in figures.items()}
    result["compile_seconds"] = compile_seconds(result["warmup_excess_seconds"])
    reported = {name: [f["reported"] for f in values] for name, values in figures.items() if values[0].get("reported")}
    if reported:
        result["compile_reported_by_trainer"] = reported
    result.update(cache_bytes_per_sample=bytes_per_sample, cache_bytes_per_sample_per_teacher=per_teacher,
                  cache_build_seconds=cache_seconds,
                  cache_samples=s["batch"] * s["steps"], per_round=per_round,
                  order=[rotated(list(runs), r) for r in range(s["repeats"])], skipped=skipped, failed=failed)
    return result


def _median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def compile_seconds(warmup_excess: dict[str, float]) -> dict[str, float]:
    """A compiled run's warm-up overrun beyond its uncompiled twin's: the compile time (median over rounds).
    A compiled row whose twin did not run (``--configs``) has none."""
    return {name: warmup_excess[name] - warmup_excess[name.removesuffix("_compiled")]
            for name in warmup_excess if name.endswith("_compiled") and name.removesuffix("_compiled") in warmup_excess}


def ratios(r: dict) -> dict:
    """Ratios of two figures (e.g. two medians, or two fastest rounds)."""
    return {f"{a}/{b}": r[a] / r[b] for a, b in RATIOS if a in r and b in r}


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    names = [name for name in (*NAMES, BF16_TEACHER, *COMPILED, *ensemble_names(result)) if name in result]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#8c8c8c", "#b0b0b0", "#c44e52", "#2a4a80", "#2f7a45", "#5a5a5a"]
    bars = ax.bar(names, [result[name] for name in names], color=colors[:len(names)])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylim(top=1.12 * max(bar.get_height() for bar in bars))  # room for the labels
    ax.set_ylabel("samples/s")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ensemble_names(result: dict) -> list[str]:
    return sorted((name for name in result if ensemble_size(name) > 1), key=ensemble_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny models on the CPU, batch 64 (the default)")
    mode.add_argument("--gpu", action="store_true", help="ViT-L/14 teacher, ViT-B/16 student, batch 256, CUDA, bf16")
    parser.add_argument("--compile", action="store_true", help="also run plain_compiled, cached_kd_compiled "
                        "(train.compile) and open_clip_plain_compiled (open_clip_train --torchcompile)")
    parser.add_argument("--compile-mode", default="student", choices=("student", "all"),
                        help="our train.compile value for the compiled rows (default: student; all = student and "
                        "objective)")
    parser.add_argument("--repeats", type=int, help="paired rounds (medians and per-round ratios reported)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--plot", help="PNG bar chart to write")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--student", help="student preset or open_clip architecture (quick: tiny)")
    parser.add_argument("--teacher", help="teacher preset or open_clip architecture (quick: tiny-teacher)")
    parser.add_argument("--batch", type=int, help="batch size of every configuration (quick: 64, GPU: 256)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of every configuration (quick: 1)")
    parser.add_argument("--teachers", type=int, default=1, help="also distill from ensembles of 2 .. N cached "
                        "teachers (rows cached_kd_2t .. cached_kd_Nt; at most 8)")
    parser.add_argument("--configs", help="comma-separated configurations to run (default: all), e.g. "
                        "plain,cached_kd,cached_kd_2t,cached_kd_3t")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the training process (quick "
                        "default: CPU cores minus workers, so loading and compute do not fight over cores; "
                        "GPU default: torch's)")
    args = parser.parse_args(argv)
    settings = dict(GPU if args.gpu else QUICK)
    settings.update({k: v for k, v in (("repeats", args.repeats), ("steps", args.steps), ("workers", args.workers),
                                       ("student", args.student), ("teacher", args.teacher), ("batch", args.batch))
                     if v is not None})
    if settings["repeats"] < 1 or settings["workers"] < 0 or settings["batch"] < 1 or \
            (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --batch and --threads must be at least 1, --workers at least 0")
    settings.update(teachers=args.teachers, configs=args.configs.split(",") if args.configs else None)
    if not 1 <= args.teachers <= 8:
        parser.error("--teachers must be between 1 and 8")
    if settings["steps"] <= settings["warmup"]:
        parser.error(f"--steps must exceed the {settings['warmup']} warm-up steps that are not timed")
    threads = args.threads
    if threads is None and settings["device"] == "cpu":
        threads = max(1, (os.cpu_count() or 1) - settings["workers"])
    if threads:
        torch.set_num_threads(threads)
    settings["threads"] = torch.get_num_threads()  # every configuration's, ours by train.threads
    if settings["device"] == "cuda" and not torch.cuda.is_available():
        print("--gpu needs CUDA", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="clipdistill-throughput-"))
    started, load_before = time.time(), os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(f"{args.out}.partial")
    result = measure(settings, work, args.compile_mode if args.compile else None, partial)
    partial.unlink(missing_ok=True)
    ratio_rounds = paired_ratios(result["per_round"])
    result.update(ratios={name: statistics.median(values) for name, values in ratio_rounds.items()},
                  ratio_rounds=ratio_rounds,
                  ratio_intervals={name: median_interval(values) for name, values in ratio_rounds.items()},
                  cpu_ratios={name: statistics.median(values)
                              for name, values in paired_cpu_ratios(result["cpu_ms_per_round"]).items()},
                  ratios_of_medians=ratios(result), ratios_best=ratios(result["best"]),
                  targets=judge(ratio_rounds, TARGETS[settings["device"]]),
                  settings={**settings, "compile": args.compile_mode if args.compile else None},
                  seconds=time.time() - started,
                  machine={"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "load_average_1min": [load_before[0], os.getloadavg()[0]],
                           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, Path(args.plot), f"{settings['student']} student, {settings['teacher']} teacher, batch "
                                      f"{settings['batch']}, {settings['device']}")
    summary = ("cpu_ms_per_step", "compile_seconds", "cache_bytes_per_sample", "cache_bytes_per_sample_per_teacher",
               "ratios", "targets", "skipped", "failed", "seconds")
    shown = (*NAMES, BF16_TEACHER, *COMPILED, *ensemble_names(result), *summary)
    print(json.dumps({k: result[k] for k in shown if k in result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
