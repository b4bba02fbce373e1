"""``clipdistill eval``: one model, one task, one dataset -> a CLIP_benchmark-schema JSON.

    clipdistill eval --model runs/x/checkpoints/step_00000300.pt --task zeroshot_retrieval \\
        --dataset flickr:data/flickr8k:dev --output f8k.json [--teacher openclip:ViT-B-32:openai]

The JSON holds ``dataset``, ``model``, ``pretrained``, ``task``, ``metrics`` (CLIP_benchmark's metric
names) and ``language``, so CLIP_benchmark's ``build`` and ``clipdistill report`` merge it with
theirs, and ``evaluated``: what the numbers are over (images, captions or classes and the class
names; for the linear probe, its training set as well). ``--teacher`` adds the KD-fidelity metrics (:mod:`clipdistill.eval.fidelity`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from clipdistill.atomic import ensure_writable_dir, ensure_writable_file, write_text_atomic
from clipdistill.data.csv_pairs import SEPARATOR_CHOICES
from clipdistill.errors import UserError
from clipdistill.eval import evaluate_retrieval, evaluate_zero_shot
from clipdistill.eval.datasets import classification_dataset, describe, retrieval_dataset
from clipdistill.eval.fidelity import (ProjectedEncoder, evaluate_fidelity, projection_from_state,
                                       retained)
from clipdistill.eval.linear_probe import evaluate_linear_probe
from clipdistill.models.load_any import LoadedModel, load_model, raw_model
from clipdistill.threads import configure_threads

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdistill eval", description="Evaluate a CLIP on one task and dataset.")
    parser.add_argument("--model", required=True, help="run checkpoint, export dir, openclip:ARCH:TAG_OR_FILE or hf:DIR")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--dataset", required=True,
                        help="imagefolder:DIR | flickr:DIR[:SPLIT] | coco:JSON:IMAGE_DIR | csv:FILE | synthetic "
                             "(the test set for linear_probe)")
    parser.add_argument("--train-dataset", default="", help="linear_probe: the training set spec")
    parser.add_argument("--output", required=True, help="result JSON file")
    parser.add_argument("--teacher", default="", help="a model spec: adds teacher-student fidelity metrics")
    parser.add_argument("--separator", default="auto", help=f"of a csv: dataset: {SEPARATOR_CHOICES} (auto: .tsv tab, "
                        ".csv comma, else from the header line)")
    parser.add_argument("--classnames", default="", help="imagenet | cifar10 | FILE (default: from folder names; "
                        "WordNet-id folders such as n01440764 get ImageNet's names)")
    parser.add_argument("--templates", default="", help="imagenet | cifar10 | FILE (default: the class set's own)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-images", type=int, default=500, help="size of a synthetic set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    probe = parser.add_argument_group("linear probe (CLIP_benchmark's defaults)")
    probe.add_argument("--val-proportion", type=float, default=0.2, help="validation share of train for the "
                       "weight-decay search (0: no search, decay 0)")
    probe.add_argument("--lp-lr", type=float, default=0.1)
    probe.add_argument("--lp-epochs", type=int, default=10)
    probe.add_argument("--lp-batch-size", type=int, default=64)
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--feature-cache", default="", help="directory where image features are stored and reused")
    return parser


def _feature_cache(args, model: LoadedModel) -> Path | None:
    if not args.feature_cache:
        return None
    identity = f"{model.name}|{model.pretrained}|{args.train_dataset}|{args.dataset}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model.name}-{Path(str(model.pretrained)).name}")[:80]
    return Path(args.feature_cache) / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def _datasets(args) -> tuple:
    sizes = {"num_images": args.num_images, "seed": args.seed}
    if args.task == "zeroshot_retrieval":
        return (retrieval_dataset(args.dataset, separator=args.separator, **sizes),)
    test = classification_dataset(args.dataset, args.classnames, args.templates, **sizes)
    if args.task == "zeroshot_classification":
        return (test,)
    if not args.train_dataset:
        raise UserError("--task linear_probe needs --train-dataset")
    return classification_dataset(args.train_dataset, args.classnames, args.templates, **sizes), test


def run_task(args, model: LoadedModel, datasets: tuple) -> dict:
    """The task's metrics for one model, CLIP_benchmark's names."""
    options = {"batch_size": args.batch_size, "workers": args.workers, "progress": not args.no_progress}
    if args.task == "zeroshot_retrieval":
        return evaluate_retrieval(model.encoder, datasets[0], **options)
    if args.task == "zeroshot_classification":
        return evaluate_zero_shot(model.encoder, datasets[0], **options)
    return evaluate_linear_probe(model.encoder, *datasets, val_proportion=args.val_proportion,
                                 feature_cache=_feature_cache(args, model), lr=args.lp_lr, epochs=args.lp_epochs,
                                 probe_batch_size=args.lp_batch_size, seed=args.seed, **options)


def _projected(model: LoadedModel):
    """The student through its run's projection head, when the model is a run checkpoint with one."""
    head = projection_from_state(model.objective_state) if model.objective_state else None
    if head is None:
        return None
    encoder = model.encoder
    return ProjectedEncoder(raw_model(model), head.to(next(raw_model(model).parameters()).device),
                            encoder.tokenizer, encoder.image_spec)


def fidelity_metrics(args, student: LoadedModel, teacher: LoadedModel, datasets: tuple, student_metrics: dict) -> dict:
    """Fidelity on the task's held-out set, and the share of the teacher's score the student keeps."""
    teacher_metrics = run_task(args, teacher, datasets)
    held_out = {"retrieval": datasets[0]} if args.task == "zeroshot_retrieval" else {"zero_shot": datasets[-1]}
    metrics = evaluate_fidelity(student.encoder, teacher.encoder, projected=_projected(student),
                                batch_size=args.batch_size, **held_out)
    metrics.update(retained(student_metrics, teacher_metrics))
    metrics.update({f"teacher_{name}": value for name, value in teacher_metrics.items()})
    return metrics


def evaluated(args, datasets: tuple) -> dict:
    """What the metrics are over: the test set's counts (and class names), and the probe's training set."""
    record = describe(datasets[-1])
    if args.task == "linear_probe":
        record["train"] = {"dataset": args.train_dataset, **describe(datasets[0])}
        del record["train"]["classnames"]  # the test set's, which the probe also uses
    return record


def result_record(args, model: LoadedModel, metrics: dict, datasets: tuple = ()) -> dict:
    """CLIP_benchmark's result schema, plus ``evaluated`` (which CLIP_benchmark's readers ignore)."""
    record = {"dataset": args.dataset, "model": str(model.name), "pretrained": str(model.pretrained),
              "task": args.task, "metrics": metrics, "language": "en"}
    if datasets:
        record["evaluated"] = evaluated(args, datasets)
    return record


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before any work: an unwritable output fails in a second, not after the evaluation.
    output = ensure_writable_file(args.output, what="result file")
    if args.feature_cache:
        ensure_writable_dir(args.feature_cache, what="feature cache")
    datasets = _datasets(args)  # before loading weights: a wrong path fails fast
    # Sized to the machine's cores unless OMP_NUM_THREADS says otherwise.
    threads, why = configure_threads(0, gpu=str(args.device).startswith("cuda"))
    logging.getLogger("clipdistill.eval").info("evaluating with %d CPU threads (%s)", threads, why)
    model = load_model(args.model, device=args.device)
    metrics = run_task(args, model, datasets)
    if args.teacher:
        metrics.update(fidelity_metrics(args, model, load_model(args.teacher, device=args.device), datasets, metrics))
    record = result_record(args, model, metrics, datasets)
    # Atomic: a full disk or a kill never leaves a half-written JSON that `clipdistill report` would choke on.
    write_text_atomic(output, json.dumps(record, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0
