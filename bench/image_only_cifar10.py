"""Image-only distillation on CIFAR-10 without captions: a student image tower trained against a teacher's
text tower, against the teacher itself and a random-init student with the same text tower.

    python bench/image_only_cifar10.py --cifar ../shared/data/cifar10 --teacher /work/runs/abl-flickr/teacher \\
        --out /work/runs/towers/cifar10 [--seeds 0 1 2] [--steps 300] [--train-per-class 500] [--test-per-class 200]

1. class-balanced subsets of the train and test folders (symlinks; the first N files of each class);
2. ``clipdistill cache`` of the train subset with the teacher (image embeddings only: no captions);
3. ``clipdistill eval`` zero-shot (CIFAR-10 class names and prompts) and linear probe (the train subset as the
   probe's training set) of the teacher, then of each student right after its ``clipdistill train``:
   ``data.kind: folder``, ``student.text_tower: teacher``, ``fd`` + ``crd_image``, from the cache; the
   random-init student is the same run with ``optim.lr=0`` for one step (its weights as built), then seeds;
4. ``OUT/results.json`` and a markdown table (mean ± sd over seeds) on stdout.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent


def flickr_student() -> dict:
    """The ablation's Flickr8k student architecture (bench/ablation.py), one source of truth."""
    spec = importlib.util.spec_from_file_location("ablation", BENCH / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FLICKR_STUDENT


def subset(source: Path, out: Path, per_class: int) -> Path:
    """``out/CLASS/FILE`` symlinks to the first ``per_class`` files (sorted) of each class folder of ``source``."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for file in sorted(folder.iterdir())[:per_class]:
            link = out / folder.name / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return out


def clipdistill(*args: str) -> None:
    """One clipdistill command, in this process (the imports are paid once, not once per command)."""
    from clipdistill.cli import main as cli

    print("+ clipdistill " + " ".join(args), flush=True)
    if cli(list(args)) != 0:
        raise SystemExit(f"clipdistill {args[0]} failed")


def config(args, train: Path) -> dict:
    return {"student": {"model": flickr_student(), "text_tower": "teacher"},
            "teacher": {"source": "checkpoint", "path": str(args.teacher)},
            "data": {"kind": "folder", "path": str(train), "workers": 0, "scale": [0.8, 1.0], "hflip": True},
            "losses": {"fd": {"weight": 1.0}, "crd_image": {"weight": 1.0}},
            "optim": {"lr": args.lr, "warmup_steps": max(1, args.steps // 10)},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "save_every": args.steps,
                      "progress": False, "log_every": max(1, args.steps // 10)},
            "eval": {"retrieval": "", "zero_shot": "", "fidelity": False},
            "cache": {"batch_size": 128, "shard_size": 2500}}


def evaluate(model: str, name: str, args, train: Path, test: Path, out: Path) -> dict:
    metrics = {}
    for task, key, extra in (("zeroshot_classification", "acc1", []),
                             ("linear_probe", "lp_acc1", ["--train-dataset", f"imagefolder:{train}"])):
        result = out / "eval" / f"{name}-{task}.json"
        if not result.exists():
            clipdistill("eval", "--model", model, "--task", task, "--dataset", f"imagefolder:{test}", *extra,
                        "--classnames", "cifar10", "--templates", "cifar10", "--output", str(result),
                        "--no-progress", "--workers", "0", "--batch-size", "256")
        metrics[task] = json.loads(result.read_text())["metrics"][key]
    return metrics


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, required=True, help="folder with train/ and test/ class folders")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher: a clipdistill run (directory)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args(argv)
    out = args.out
    (out / "eval").mkdir(parents=True, exist_ok=True)
    train = subset(args.cifar / "train", out / "data" / "train", args.train_per_class)
    test = subset(args.cifar / "test", out / "data" / "test", args.test_per_class)
    config_file = out / "image_only.yaml"
    config_file.write_text(yaml.safe_dump(config(args, train), sort_keys=False))
    if not (out / "cache" / "manifest.json").exists() or not json.loads((out / "cache" / "manifest.json").read_text())["complete"]:
        clipdistill("cache", str(config_file), "--out", str(out / "cache"))
    from_cache = ["teacher.source=cache", f"teacher.path={out / 'cache'}"]
    runs = {"random": ["train.steps=1", "optim.lr=0", "train.save_every=1", "optim.warmup_steps=1"]}
    runs.update({f"seed{seed}": [f"train.seed={seed}"] for seed in args.seeds})
    # Each model evaluated as soon as it is trained, and every step skipped when its output exists: a run cut
    # short is continued (or summarised with fewer seeds: --seeds 0) by the same command.
    results = {"teacher": evaluate(str(args.teacher), "teacher", args, train, test, out)}
    for name, overrides in runs.items():
        if not (out / name / "results.json").exists():
            clipdistill("train", str(config_file), "--out", str(out / name), "--overwrite", *from_cache, *overrides)
        results[name] = evaluate(str(out / name), name, args, train, test, out)
    (out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                  "acc1": results}, indent=2))
    students = [results[f"seed{s}"] for s in args.seeds]
    print("| model | zero-shot top-1 (%) | linear probe top-1 (%) |\n|---|---|---|")
    for name, rows in (("teacher", [results["teacher"]]), ("random-init student + teacher text tower", [results["random"]]),
                       (f"image-only student ({len(students)} seeds)", students)):
        print(f"| {name} | {mean_sd([r['zeroshot_classification'] for r in rows])} | "
              f"{mean_sd([r['linear_probe'] for r in rows])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
