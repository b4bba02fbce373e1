"""The training loop, readable top to bottom.

    clipdistill train configs/smoke.yaml --out runs/smoke [key=value ...]

Under torchrun each process runs this same function; ranks split the data, gather embeddings in
the objective, and average gradients through DDP. Where the teachers' embeddings come from (how many
teachers, each live, cached or both) is the targets object's business (:mod:`clipdistill.targets`): the
loop asks it what the loader must add to a batch, and for the embeddings of each batch.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from clipdistill import build, distributed
from clipdistill import config as config_lib
from clipdistill.atomic import write_text_atomic
from clipdistill.data import train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.losses import needs_teacher
from clipdistill.threads import configure_threads, dataloader_workers, oversubscription
from clipdistill.train import checkpoint, run_dir
from clipdistill.train.bad_data import BadDataTally
from clipdistill.train.compiling import compile_distiller
from clipdistill.train.evaluation import Evaluator
from clipdistill.train.metrics_log import MetricsLog
from clipdistill.train.optim import build_optimizer, warmup_cosine
from clipdistill.train.step import Distiller, NonFiniteLoss, NonFiniteSkips, train_step

log = logging.getLogger("clipdistill.train")


@dataclass
class Parts:
    """What a run trains with: built once, before the first step."""

    student: object  # clipdistill.models.Student
    targets: object | None  # every teacher's targets (clipdistill.targets.EnsembleTargets), None without a teacher
    distiller: Distiller  # the student and the objective (heads, learnable scales)
    model: torch.nn.Module  # the distiller, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer


def run(cfg: config_lib.Config, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Train (or distill) a student as ``cfg`` says; write everything under ``out_dir``.

    Returns the final evaluation metrics and run statistics (also written to ``results.json``).
    """
    out_dir = Path(out_dir)
    ctx = distributed.setup()
    open_run_directory(out_dir, cfg, ctx, overwrite)
    with train_log(out_dir / "train.log", enabled=ctx.is_main):
        workers, threads = choose_workers_and_threads(cfg, ctx)
        dataset = build.dataset_from(cfg.data)  # draws from no global RNG; first, so bad data stops at once
        build.check_captions(dataset, cfg.losses, cfg.student, cfg.teacher)
        torch.manual_seed(cfg.train.seed)  # every rank builds the same initial student and heads
        parts = build_parts(cfg, ctx)
        restored = checkpoint.restore_run(cfg.train.resume, out_dir / "checkpoints", parts.distiller,
                                          parts.optimizer)
        start_step = restored.step if restored else 0
        if restored:
            log.info("resumed from %s at step %d", restored.path, start_step)
        tally = BadDataTally.from_state(restored.bad_data if restored else {"counts": {}, "good": 0},
                                        cfg.data.max_bad_fraction, device=ctx.device)
        nonfinite = NonFiniteSkips(cfg.train.skip_nonfinite, skipped=restored.skipped_nonfinite if restored else 0)
        if hasattr(dataset, "bad"):  # rows a CSV dropped while being read: counted, judged against its size
            tally.add_listed(dataset.bad, usable=len(dataset))
        batches = build_batches(cfg, dataset, parts, ctx, workers, start_step,
                                restored.data if restored else None)
        evaluator = build_evaluator(cfg, parts)
        if ctx.is_main:
            log.info("%s", banner(cfg, out_dir, ctx, parts, dataset, workers, threads, evaluator))
        metrics_log = MetricsLog(out_dir, enabled=ctx.is_main,
                                 resumed_at=start_step if cfg.train.resume else None)
        started = time.time()
        train(cfg, ctx, parts, batches, tally, nonfinite, evaluator, metrics_log, out_dir, start_step)
        final = evaluate(evaluator, parts.student, ctx, metrics_log, cfg.train.steps)
        results = {"metrics": final, "bad_samples": tally.summary(), "skipped_nonfinite_steps": nonfinite.skipped,
                   "params": sum(p.numel() for p in parts.student.model.parameters()),
                   "seconds": time.time() - started, "steps": cfg.train.steps}
        finish(results, tally, ctx, out_dir)
        metrics_log.close()
        distributed.barrier()
    return results


# ----------------------------------------------------------------------------------------- the steps

def open_run_directory(out_dir: Path, cfg: config_lib.Config, ctx, overwrite: bool) -> None:
    """Refuse a directory that holds another run (every rank checks, so all stop together); the main rank
    clears it (``--overwrite``) and writes the resolved config."""
    run_dir.refuse_reuse(out_dir, resuming=bool(cfg.train.resume), overwrite=overwrite)
    distributed.barrier()  # every rank has looked before the main rank changes anything
    if ctx.is_main:
        if overwrite:
            run_dir.clear_run(out_dir)
        run_dir.create(out_dir, lambda path: config_lib.dump(cfg, path))
    else:
        _quiet_rank()


def choose_workers_and_threads(cfg: config_lib.Config, ctx) -> tuple[int, tuple[int, str]]:
    per_node, gpu = max(1, distributed.local_world_size()), ctx.device.type == "cuda"
    workers = dataloader_workers(cfg.data.workers, per_node, gpu=gpu)
    threads = configure_threads(cfg.train.threads, per_node, gpu=gpu)
    warning = oversubscription(threads[0], workers, per_node, gpu=gpu)
    if warning and ctx.is_main:
        log.warning("%s", warning)
    return workers, threads


def build_parts(cfg: config_lib.Config, ctx) -> Parts:
    """The student, where its teacher's embeddings come from, the objective, DDP and the optimizer."""
    targets = build.targets_from(config_lib.teacher_sections(cfg), build.augmentation_from(cfg.data), ctx.device) \
        if needs_teacher(cfg.losses) else None
    student = build.student_from(cfg.student, teacher=build.tower_teacher(cfg.student, cfg.teacher, targets, ctx.device))
    local_loss = build.local_loss_from(cfg.train, ctx.world_size)
    objective = build.objective_from(cfg.losses, student, targets, local_loss=local_loss, heads=cfg.train.heads)
    if objective.student_patch_dropout:  # mfd: the student's image tower trains on a share of its patches
        student.drop_patches(objective.student_patch_dropout)
    distiller = Distiller(student.model, objective).to(ctx.device)
    compile_distiller(distiller, cfg.train.compile)
    model = distiller
    if ctx.world_size > 1:
        # find_unused_parameters: KD-only objectives (fd, icl, ...) leave the student's logit scale unused,
        # and DDP would otherwise skip reducing the bucket holding it.
        model = DistributedDataParallel(distiller, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                        find_unused_parameters=True)
    o = cfg.optim
    optimizer = build_optimizer(distiller, lr=o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), eps=o.eps)
    return Parts(student, targets, distiller, model, optimizer)


def build_batches(cfg: config_lib.Config, dataset, parts: Parts, ctx, workers: int, start_step: int,
                  resume_from: dict | None):
    """One crop per sample, rendered for each model; its captions tokenized for each model."""
    needs = parts.targets.loader_needs(parts.student) if parts.targets is not None else None
    specs = {"student_image": parts.student.image_spec, **(needs.specs if needs else {})}
    tokenizers = {"student_text": parts.student.tokenizer, **(needs.tokenizers if needs else {})}
    transform = PairedTransform(specs, build.augmentation_from(cfg.data))
    return train_batches(dataset, transform=transform, tokenizers=tokenizers, batch_size=cfg.train.batch_size,
                         seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size, workers=workers,
                         start_step=start_step, subset=cfg.data.subset or None, keep=cfg.data.keep or None,
                         views=needs.views if needs else None, batch_extras=needs.batch_extras if needs else None,
                         resume_from=resume_from)


def build_evaluator(cfg: config_lib.Config, parts: Parts) -> Evaluator:
    e = cfg.eval
    teacher = getattr(parts.targets, "teacher", None) if e.fidelity else None
    return Evaluator(retrieval=e.retrieval, zero_shot=e.zero_shot, num_images=e.num_images, seed=cfg.data.seed,
                     batch_size=e.batch_size, linear_probe=e.linear_probe, linear_probe_train=e.linear_probe_train,
                     classnames=e.classnames, templates=e.templates, teacher=teacher,
                     objective=parts.distiller.objective, data_kind=cfg.data.kind)


def train(cfg: config_lib.Config, ctx, parts: Parts, batches, tally: BadDataTally, nonfinite: NonFiniteSkips,
          evaluator: Evaluator, metrics_log: MetricsLog, out_dir: Path, start_step: int) -> None:
    """The loop: a batch, its teacher targets, one optimizer step; then logging, evaluation, checkpoints."""
    global_batch = cfg.train.batch_size * ctx.world_size
    progress = tqdm(total=cfg.train.steps, initial=start_step, disable=not (ctx.is_main and cfg.train.progress),
                    desc="train", unit="step", dynamic_ncols=True)
    window_start, window_steps = time.time(), 0
    for step in range(start_step, cfg.train.steps):
        batch = next(batches)
        # Summed over ranks (one small all-reduce under DDP): every rank stops at the same step, or none does.
        tally.add(batch["bad"], good=len(batch["key"]))
        tally.check()
        teacher = parts.targets(batch) if parts.targets is not None else None
        lr = warmup_cosine(step, base_lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                           total_steps=cfg.train.steps)
        try:
            loss, terms = train_step(parts.model, batch, teacher, optimizer=parts.optimizer, lr=lr, device=ctx.device,
                                     precision=cfg.train.precision, grad_clip=cfg.optim.grad_clip, step=step + 1,
                                     accum_steps=cfg.train.accum_steps)
        except NonFiniteLoss as err:  # re-raised (the run stops, checkpoints untouched) past train.skip_nonfinite
            nonfinite.skip(err)
            loss, terms = None, {}
            metrics_log.write(step + 1, {"skipped_nonfinite": nonfinite.skipped})
        done = step + 1
        window_steps += 1
        progress.update(1)

        if (done % cfg.train.log_every == 0 or done == cfg.train.steps) and loss is not None:
            samples_per_s = window_steps * global_batch / max(time.time() - window_start, 1e-9)
            values = log_step(metrics_log, done, loss, terms, lr, samples_per_s, parts.distiller)
            progress.set_postfix(loss=f"{values['loss']:.3f}", samples_s=f"{samples_per_s:.0f}")
            window_start, window_steps = time.time(), 0

        if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.train.steps:
            evaluate(evaluator, parts.student, ctx, metrics_log, done)

        if done % cfg.train.save_every == 0 or done == cfg.train.steps:
            save(out_dir, cfg, done, parts, tally, nonfinite, batches.state(), ctx)
    progress.close()


def log_step(metrics_log: MetricsLog, step: int, loss, terms: dict, lr: float, samples_per_s: float,
             distiller: Distiller) -> dict:
    # One tensor of all loss values: one all-reduce across ranks and one device sync, not one per term.
    loss_value, *term_values = distributed.mean_across_ranks(torch.stack([loss, *terms.values()])).tolist()
    values = {"loss": loss_value, **dict(zip(terms, term_values)), "lr": lr, "samples_per_s": samples_per_s,
              "logit_scale": distiller.student.logit_scale.exp().item()}
    metrics_log.write(step, values)
    return values


def evaluate(evaluator: Evaluator, student, ctx, metrics_log: MetricsLog, step: int) -> dict:
    metrics = evaluator(student) if ctx.is_main else {}
    if metrics:
        metrics_log.write(step, metrics, prefix="eval")
    distributed.barrier()
    return metrics


def save(out_dir: Path, cfg: config_lib.Config, step: int, parts: Parts, tally: BadDataTally,
         nonfinite: NonFiniteSkips, data_state: dict, ctx) -> None:
    data_state = _merged(distributed.all_objects(data_state))  # every rank's shard readers
    checkpoint.save_rank_shard(out_dir / "checkpoints", step=step, distiller=parts.distiller, optimizer=parts.optimizer)
    distributed.barrier()  # every rank's shard is on disk before the main file that names them
    if ctx.is_main:
        checkpoint.save_run(out_dir / "checkpoints", step=step, distiller=parts.distiller, optimizer=parts.optimizer,
                            bad_data=tally.state(), skipped_nonfinite=nonfinite.skipped, data=data_state,
                            config=config_lib.to_dict(cfg), keep=cfg.train.keep_checkpoints,
                            student_build=parts.student.build_record)
    distributed.barrier()


def finish(results: dict, tally: BadDataTally, ctx, out_dir: Path) -> None:
    if not ctx.is_main:
        return
    # Atomic: a full disk here ends the run with one line and no half-written results; the final
    # checkpoint is already saved.
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    if tally.summary():
        log.warning("skipped %d unreadable samples: %s", sum(tally.summary().values()), tally.summary())
    log.info("done: %s", out_dir / "results.json")


# ----------------------------------------------------------------------------------------- helpers

def _merged(states: list[dict]) -> dict:
    """One data state from every rank's: their shard readers are disjoint."""
    positions = {reader: at for state in states for reader, at in state.get("positions", {}).items()}
    return {"readers": states[0]["readers"], "positions": positions} if positions else {}


def banner(cfg: config_lib.Config, out_dir: Path, ctx, parts: Parts, dataset, workers: int,
           threads: tuple[int, str], evaluator: Evaluator) -> str:
    """What this run is, in a few lines at its start (console and train.log)."""
    teacher = "none" if parts.targets is None else "; ".join(
        f"{t.source} {t.model or ''} {t.pretrained or t.path or ''}".strip() + f" (dim {dim})"
        for t, dim in zip(config_lib.teacher_sections(cfg), parts.targets.dims))
    try:
        rows = f"{len(dataset)} rows"
    except TypeError:  # streamed shards
        rows = "streamed shards"
    specs = evaluator.specs
    evals = [f"{task} {spec}" for task, spec in (("retrieval", specs.get("retrieval")),
                                                  ("zero-shot", specs.get("zero_shot")),
                                                  ("linear probe", cfg.eval.linear_probe)) if spec]
    return "\n".join([
        f"run {out_dir} ({'resuming' if cfg.train.resume else 'new'})",
        f"  student  {parts.student.name}: {parameter_count(parts.student.model)}",
        f"  teacher  {teacher}",
        f"  data     {cfg.data.kind} {cfg.data.path} ({rows}); {workers} DataLoader workers",
        "  losses   " + ", ".join(f"{name} x{spec.get('weight', 1.0)}" for name, spec in cfg.losses.items()),
        f"  steps    {cfg.train.steps} of {cfg.train.batch_size} x {ctx.world_size} rank(s) on {ctx.device}",
        f"  threads  {threads[0]} ({threads[1]})",
        f"  eval     {'; '.join(evals) or 'none (set eval.retrieval / eval.zero_shot)'}",
    ])


def parameter_count(model) -> str:
    """``3,386,113 parameters``; with a reused (frozen) teacher tower, how many of them train."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = f" ({trained:,} trained, {total - trained:,} frozen)" if trained != total else ""
    return f"{total:,} parameters{frozen}"


@contextmanager
def train_log(path: Path, enabled: bool):
    """The run's own log file (main rank): clipdistill's messages from INFO up, for this run only."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("clipdistill")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _quiet_rank() -> None:
    """Under torchrun only rank 0 talks: the others log errors only."""
    logging.getLogger("clipdistill").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill train", description="Train or distill a CLIP student.",
                                     epilog="Every config key and its default: clipdistill config [SECTION].")
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--out", required=True, help="run directory (config, metrics, checkpoints, tensorboard)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds a run (its files are removed first)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100 resume=latest "
                        "(every key, its default and meaning: clipdistill config [SECTION])")
    args = parser.parse_intermixed_args(argv)
    overrides = [_alias(o) for o in args.overrides]
    cfg = config_lib.load(args.config, overrides)
    try:
        results = run(cfg, args.out, overwrite=args.overwrite)
        if distributed.is_main_process():
            print(json.dumps(results["metrics"], indent=2))
    finally:
        distributed.teardown()
    return 0


def _alias(override: str) -> str:
    # `resume=latest` reads better on a command line than `train.resume=latest`.
    return "train." + override if override.startswith("resume=") else override
