"""Evaluation speed: ``clipdistill eval`` (retrieval, zero-shot) against clip-benchmark on the same model and data.

    pip install --no-deps clip-benchmark     # or: pip install -e ".[parity]"
    python bench/eval_speed.py --out runs/eval_speed.json [--images 256 --rounds 5 --batch 64 --workers 0]

The model is a random-init open_clip model of the ``tiny-teacher`` preset (``--model`` for another),
the data the procedural sets of bench/parity_clip_benchmark.py (retrieval: images x 3 numbered captions;
zero-shot: the first 10 classes), held in memory, so both sides decode and transform the same PIL
images with the same eval transform, batch size and DataLoader workers. Ours is what ``clipdistill
eval --task zeroshot_retrieval|zeroshot_classification`` runs once the model is loaded
(``evaluate_retrieval`` / ``evaluate_zero_shot``); theirs is clip_benchmark's
``zeroshot_retrieval.evaluate`` / ``zeroshot_classification.evaluate`` (amp off on the CPU). Model
loading is outside both timings.

Paired rounds as in bench/throughput.py: every round runs the four measurements back to back, order
rotated; the JSON gives images/s (median over rounds), CPU seconds of this process, the per-round ratios
ours/theirs, their median (the figure judged against the target ≥ 1.0) and the sign-test 90 % interval
(see bench/throughput.py), and ``cpu_ratios``: the same ratio from CPU seconds.
The metrics of both sides are compared too (same model, same data: they must agree within 1e-4).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from parity_clip_benchmark import (_accuracy_numpy2, _captions_collate, _first_classes, _Subset,  # noqa: E402
                                   _Torchvision)
from throughput import median_interval, rotated  # noqa: E402

from clipdistill.data.synthetic import SyntheticClassification, SyntheticRetrieval  # noqa: E402
from clipdistill.data.transforms import eval_transform  # noqa: E402
from clipdistill.eval import evaluate_retrieval, evaluate_zero_shot  # noqa: E402
from clipdistill.models import build_student  # noqa: E402

TARGET = 1.0
TOLERANCE = 1e-4


def load_clip_benchmark():
    """clip_benchmark's metrics package, or None when the optional extra is not installed."""
    try:
        import clip_benchmark.metrics.zeroshot_classification  # noqa: F401
        import clip_benchmark.metrics.zeroshot_retrieval  # noqa: F401
        from clip_benchmark import metrics
    except ImportError:
        return None
    metrics.zeroshot_classification.accuracy = _accuracy_numpy2  # its own fails on NumPy 2 (see the parity script)
    return metrics


def timed(function) -> tuple[dict, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measurements(student, retrieval, zero_shot, cb, batch: int, workers: int) -> dict:
    """name -> (function returning metrics, number of images it embeds)."""
    model, transform = student.model.eval(), eval_transform(student.image_spec)

    def loader(data, collate=None):
        return DataLoader(_Torchvision(data, transform), batch_size=batch, num_workers=workers, collate_fn=collate)

    templates = [t.replace("{}", "{c}") for t in zero_shot.templates]  # clip_benchmark formats with {c}
    return {
        "ours_retrieval": (lambda: evaluate_retrieval(student, retrieval, batch_size=batch, workers=workers),
                           len(retrieval)),
        "clip_benchmark_retrieval": (lambda: cb.zeroshot_retrieval.evaluate(
            model, loader(retrieval, _captions_collate), student.tokenizer, device="cpu", amp=False,
            recall_k_list=[1, 5, 10]), len(retrieval)),
        "ours_zero_shot": (lambda: evaluate_zero_shot(student, zero_shot, batch_size=batch, workers=workers),
                           len(zero_shot)),
        "clip_benchmark_zero_shot": (lambda: cb.zeroshot_classification.evaluate(
            model, loader(zero_shot), student.tokenizer, zero_shot.classnames, templates, device="cpu", amp=False),
            len(zero_shot)),
    }


def agree(ours: dict, theirs: dict) -> bool:
    """Every metric the two report under the same name is equal within the tolerance."""
    shared = set(ours) & set(theirs)
    return bool(shared) and all(abs(ours[name] - theirs[name]) <= TOLERANCE for name in shared)


def run_rounds(runs: dict, rounds: int) -> tuple[dict, dict, dict]:
    rates = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    metrics = {}
    for round_ in range(rounds):
        for name in rotated(list(runs), round_):
            function, images = runs[name]
            metrics[name], wall, cpu_seconds = timed(function)
            rates[name].append(images / wall)
            cpu[name].append(cpu_seconds)
            print(f"round {round_ + 1}/{rounds} {name:<26} {rates[name][-1]:8.1f} images/s", flush=True)
    return rates, cpu, metrics


def summarize(rates: dict, cpu: dict, metrics: dict) -> dict:
    result = {"images_per_s": {n: statistics.median(v) for n, v in rates.items()}, "per_round": rates,
              "cpu_seconds": {n: statistics.median(v) for n, v in cpu.items()}, "ratios": {}, "ratio_rounds": {},
              "ratio_intervals": {}, "targets": {}, "metrics_agree": {}}
    for task in ("retrieval", "zero_shot"):
        ours, theirs = f"ours_{task}", f"clip_benchmark_{task}"
        per_round = [a / b for a, b in zip(rates[ours], rates[theirs])]
        name = f"{ours}/{theirs}"
        median = statistics.median(per_round)
        result["ratio_rounds"][name], result["ratios"][name] = per_round, median
        result["ratio_intervals"][name] = median_interval(per_round)
        # The same from CPU seconds of this process (theirs / ours): less moved by waiting for a busy machine.
        result.setdefault("cpu_ratios", {})[name] = statistics.median(b / a for a, b in zip(cpu[ours], cpu[theirs]))
        result["targets"][name] = {"target": TARGET, "median": median, "met": median >= TARGET}
        result["metrics_agree"][task] = agree(metrics[ours], metrics[theirs])
    result["metrics"] = metrics
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--model", default="tiny-teacher", help="clipdistill preset or open_clip architecture")
    parser.add_argument("--images", type=int, default=256, help="retrieval images (3 captions each); zero-shot "
                        "uses about as many")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.images < 10 or args.rounds < 1 or args.batch < 1 or args.workers < 0:
        parser.error("--images must be at least 10, --rounds and --batch at least 1, --workers at least 0")
    cb = load_clip_benchmark()
    if cb is None:
        print("clip-benchmark is not installed: pip install --no-deps clip-benchmark", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = build_student(args.model)
    retrieval = _Subset(SyntheticRetrieval(args.images, seed=3))
    # The first 10 of 24 classes: 24 * images / 10 procedural images hold about `images` of them.
    zero_shot = _first_classes(SyntheticClassification(24 * args.images // 10, seed=2), 10)
    # No outer no_grad: each side sets up its own (inference mode, no_grad), as it does when used.
    rates, cpu, metrics = run_rounds(measurements(student, retrieval, zero_shot, cb, args.batch, args.workers),
                                     args.rounds)
    result = summarize(rates, cpu, metrics)
    result["settings"] = {**vars(args), "zero_shot_images": len(zero_shot), "threads": torch.get_num_threads(),
                          "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("images_per_s", "ratios", "ratio_intervals", "metrics_agree")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
