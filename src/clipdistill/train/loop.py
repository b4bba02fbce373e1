"""The training loop, readable top to bottom.

    clipdistill train configs/smoke.yaml --out runs/smoke [key=value ...]

Under torchrun each process runs this same function; ranks split the data, gather embeddings in
the objective, and average gradients through DDP.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from clipdistill import config as config_lib
from clipdistill import distributed
from clipdistill.atomic import write_text_atomic
from clipdistill.cache.training import open_for_training
from clipdistill.data import build_dataset, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.losses.objective import build_objective
from clipdistill.models import build_student, load_teacher, same_tokenizer
from clipdistill.targets import LiveTeacherTargets
from clipdistill.train import checkpoint
from clipdistill.train.bad_data import BadDataTally
from clipdistill.train.evaluation import Evaluator
from clipdistill.train.metrics_log import MetricsLog
from clipdistill.train.optim import build_optimizer, load_optimizer_state, warmup_cosine
from clipdistill.train.step import Distiller, NonFiniteLoss, NonFiniteSkips, train_step

log = logging.getLogger("clipdistill.train")


def run(cfg: config_lib.Config, out_dir: str | Path) -> dict:
    """Train (or distill) a student as ``cfg`` says; write everything under ``out_dir``.

    Returns the final evaluation metrics and run statistics (also written to ``results.json``).
    """
    out_dir = Path(out_dir)
    ctx = distributed.setup()
    if ctx.is_main:
        _prepare_out_dir(out_dir, cfg)
    torch.manual_seed(cfg.train.seed)

    # --- models: student (trained), teacher (frozen, only if some loss needs it), objective
    student = build_student(cfg.student.model, cfg.student.pretrained)
    teacher, cached = None, None
    if any(name != "clip" for name in cfg.losses):
        if cfg.teacher.source == "none":
            raise UserError(f"losses {sorted(set(cfg.losses) - {'clip'})} need a teacher: set teacher.source")
        if cfg.teacher.source == "cache":  # stored embeddings; a live teacher only in hybrid mode
            cached = open_for_training(cfg.teacher.path, mode=cfg.teacher.cache_mode, model=cfg.teacher.model,
                                       pretrained=cfg.teacher.pretrained, scale=cfg.data.scale, hflip=cfg.data.hflip,
                                       device=str(ctx.device), precision=cfg.teacher.precision)
            teacher = cached.teacher
        else:
            teacher = load_teacher(cfg.teacher.source, model=cfg.teacher.model, pretrained=cfg.teacher.pretrained,
                                   path=cfg.teacher.path, device=str(ctx.device), precision=cfg.teacher.precision)
    teacher_dim = cached.dim if cached else teacher.embed_dim if teacher else None
    objective = build_objective(cfg.losses, student_dim=student.embed_dim, teacher_dim=teacher_dim)
    if objective.student_patch_dropout:
        _mask_student_patches(student.model, objective.student_patch_dropout)
    # Every rank starts from the same initialization (heads included): seed, then build.
    distiller = Distiller(student.model, objective).to(ctx.device)
    # find_unused_parameters: KD-only objectives (fd, icl, ...) leave the student's logit scale unused,
    # and DDP would otherwise skip reducing the bucket holding it.
    model = DistributedDataParallel(distiller, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                    find_unused_parameters=True) if ctx.world_size > 1 else distiller
    targets = cached.targets(ctx.device) if cached else LiveTeacherTargets(teacher, ctx.device) if teacher else None

    # --- optimization
    optimizer = build_optimizer(distiller, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.train.steps)

    # --- resume: weights, optimizer, schedule, RNG, data position
    start_step, tally = 0, BadDataTally(cfg.data.max_bad_fraction, device=ctx.device)
    nonfinite = NonFiniteSkips(cfg.train.skip_nonfinite)
    resumed = checkpoint.load_resume(cfg.train.resume, out_dir / "checkpoints")
    if resumed is not None:
        resume_from, state = resumed
        distiller.student.load_state_dict(state["student"])
        distiller.objective.load_state_dict(state["objective"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        # The saved counts are the run's totals over ranks: every rank restores them, then adds its own.
        tally = BadDataTally.from_state(state["bad_data"], cfg.data.max_bad_fraction, device=ctx.device)
        nonfinite = NonFiniteSkips(cfg.train.skip_nonfinite, skipped=state.get("skipped_nonfinite", 0))
        start_step = state["step"]
        log.info("resumed from %s at step %d", resume_from, start_step)

    # --- data: one crop per sample, rendered for each model; tokenized for each model. The loader renders
    # once per distinct ImageSpec and tokenizes once per distinct tokenizer object, so the teacher gets the
    # student's tokenizer when the two provably agree (the usual case: open_clip's BPE, same context).
    specs = {"student_image": student.image_spec}
    tokenizers = {"student_text": student.tokenizer}
    if teacher is not None:
        specs["teacher_image"] = teacher.image_spec
        tokenizers["teacher_text"] = (student.tokenizer if same_tokenizer(teacher.tokenizer, student.tokenizer)
                                      else teacher.tokenizer)
    dataset = build_dataset(cfg.data.kind, path=cfg.data.path, num_samples=cfg.data.num_samples,
                            seed=cfg.data.seed, image_key=cfg.data.image_key, caption_key=cfg.data.caption_key,
                            separator=cfg.data.separator)
    if hasattr(dataset, "bad"):  # rows a CSV dropped while being read: counted, judged against its size
        tally.add_listed(dataset.bad, usable=len(dataset))
    batches = train_batches(dataset, transform=PairedTransform(specs, scale=cfg.data.scale, hflip=cfg.data.hflip),
                            tokenizers=tokenizers, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                            rank=ctx.rank, world_size=ctx.world_size, workers=cfg.data.workers,
                            start_step=start_step, subset=cfg.data.subset or None, keep=cfg.data.keep or None,
                            views=cached.cache.views() if cached else None,
                            batch_extras=targets.stored_rows if cached else None)

    evaluator = Evaluator(retrieval=cfg.eval.retrieval, zero_shot=cfg.eval.zero_shot, num_images=cfg.eval.num_images,
                          seed=cfg.data.seed, batch_size=cfg.eval.batch_size, linear_probe=cfg.eval.linear_probe,
                          linear_probe_train=cfg.eval.linear_probe_train, classnames=cfg.eval.classnames,
                          templates=cfg.eval.templates, teacher=teacher if cfg.eval.fidelity else None,
                          objective=distiller.objective, data_kind=cfg.data.kind)
    metrics_log = MetricsLog(out_dir, enabled=ctx.is_main, resumed_at=start_step if cfg.train.resume else None)
    global_batch = cfg.train.batch_size * ctx.world_size
    progress = tqdm(total=cfg.train.steps, initial=start_step, disable=not (ctx.is_main and cfg.train.progress),
                    desc="train", unit="step", dynamic_ncols=True)
    started, window_start, window_steps = time.time(), time.time(), 0

    # --- the loop
    for step in range(start_step, cfg.train.steps):
        batch = next(batches)
        # Summed over ranks (one small all-reduce under DDP): every rank stops at the same step, or none does.
        tally.add(batch["bad"], good=len(batch["key"]))
        tally.check()
        teacher_embeddings = targets(batch) if targets else None
        try:
            loss, terms = train_step(model, batch, teacher_embeddings, optimizer=optimizer, scheduler=scheduler,
                                     device=ctx.device, precision=cfg.train.precision, grad_clip=cfg.optim.grad_clip,
                                     step=step + 1, accum_steps=cfg.train.accum_steps)
        except NonFiniteLoss as err:  # re-raised (the run stops, checkpoints untouched) past train.skip_nonfinite
            nonfinite.skip(err, scheduler)
            loss, terms = None, {}
            metrics_log.write(step + 1, {"skipped_nonfinite": nonfinite.skipped})
        done = step + 1
        window_steps += 1
        progress.update(1)

        if (done % cfg.train.log_every == 0 or done == cfg.train.steps) and loss is not None:
            samples_per_s = window_steps * global_batch / max(time.time() - window_start, 1e-9)
            # One tensor of all loss values: one all-reduce across ranks and one device sync, not one per term.
            loss_value, *term_values = distributed.mean_across_ranks(torch.stack([loss, *terms.values()])).tolist()
            values = {"loss": loss_value, **dict(zip(terms, term_values)),
                      "lr": scheduler.get_last_lr()[0], "samples_per_s": samples_per_s,
                      "logit_scale": distiller.student.logit_scale.exp().item()}
            metrics_log.write(done, values)
            progress.set_postfix(loss=f"{values['loss']:.3f}", samples_s=f"{samples_per_s:.0f}")
            window_start, window_steps = time.time(), 0

        if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.train.steps:
            _evaluate(evaluator, student, ctx, metrics_log, done)

        if done % cfg.train.save_every == 0 or done == cfg.train.steps:
            _save(out_dir, cfg, done, distiller, optimizer, scheduler, tally, ctx, nonfinite.skipped)

    progress.close()
    final = _evaluate(evaluator, student, ctx, metrics_log, cfg.train.steps)
    results = {"metrics": final, "bad_samples": tally.summary(), "skipped_nonfinite_steps": nonfinite.skipped,
               "params": sum(p.numel() for p in student.model.parameters()),
               "seconds": time.time() - started, "steps": cfg.train.steps}
    if ctx.is_main:
        # Atomic: a full disk here ends the run with one line and no half-written results; the final
        # checkpoint is already saved.
        write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
        if tally.summary():
            log.warning("skipped %d unreadable samples: %s", sum(tally.summary().values()), tally.summary())
    metrics_log.close()
    distributed.barrier()
    return results


def _prepare_out_dir(out_dir: Path, cfg: config_lib.Config) -> None:
    """Fail before training if the run directory cannot be written: writing the resolved config is the test."""
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        config_lib.dump(cfg, out_dir / "config.yaml")
    except OSError as err:
        raise UserError(f"cannot write to run directory {out_dir}: {err.strerror or err}") from None


def _mask_student_patches(model, ratio: float) -> None:
    """MFD: the student's image tower trains on a random (1 - ratio) of its patches (eval sees all)."""
    from open_clip.transformer import PatchDropout

    if not hasattr(model.visual, "patch_dropout"):
        raise UserError(f"loss 'mfd' drops image patches and needs a ViT student; "
                        f"this student's image tower is a {type(model.visual).__name__}")
    model.visual.patch_dropout = PatchDropout(ratio)


def _evaluate(evaluator: Evaluator, student, ctx, metrics_log: MetricsLog, step: int) -> dict:
    metrics = evaluator(student) if ctx.is_main else {}
    if metrics:
        metrics_log.write(step, metrics, prefix="eval")
    distributed.barrier()
    return metrics


def _save(out_dir: Path, cfg, step: int, distiller: Distiller, optimizer, scheduler, tally: BadDataTally, ctx,
          skipped_nonfinite: int = 0) -> None:
    if ctx.is_main:
        state = {"step": step, "student": distiller.student.state_dict(), "objective": distiller.objective.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": torch.get_rng_state(), "bad_data": tally.state(), "skipped_nonfinite": skipped_nonfinite,
                 "config": config_lib.to_dict(cfg)}
        checkpoint.save(state, out_dir / "checkpoints", step, keep=cfg.train.keep_checkpoints)
    distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill train", description="Train or distill a CLIP student.")
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--out", required=True, help="run directory (config, metrics, checkpoints, tensorboard)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100 resume=latest "
                        "(every key, its default and meaning: clipdistill config [SECTION])")
    args = parser.parse_intermixed_args(argv)
    overrides = [_alias(o) for o in args.overrides]
    cfg = config_lib.load(args.config, overrides)
    try:
        results = run(cfg, args.out)
    finally:
        distributed.teardown()
    print(json.dumps(results["metrics"], indent=2))
    return 0


def _alias(override: str) -> str:
    # `resume=latest` reads better on a command line than `train.resume=latest`.
    return "train." + override if override.startswith("resume=") else override
