"""``clipdistill cache CONFIG.yaml --out DIR [key=value ...]``: embed a dataset with the teacher, once.

Uses the run config's ``teacher`` and ``data`` sections (the same file a training run uses) and its
``cache`` section (views, dtype, format, shard_size, batch_size, seed). Killed, the same command
resumes from the last complete shard. Under ``torchrun`` ranks write disjoint shards; rank 0 then
writes the index and completes the manifest. Train from the result with
``teacher.source=cache teacher.path=DIR``.
"""
from __future__ import annotations

import argparse
import logging

import torch

from clipdistill import build, distributed
from clipdistill import config as config_lib
from clipdistill.atomic import ensure_writable_dir
from clipdistill.cache.manifest import read_manifest
from clipdistill.cache.writer import finalize, missing_shards, write_cache
from clipdistill.errors import UserError
from clipdistill.threads import configure_threads, dataloader_workers

log = logging.getLogger("clipdistill.cache")


def dataset_info(data: config_lib.DataConfig) -> dict:
    """What the manifest records about the embedded data."""
    return {"kind": data.kind, "path": data.path, "num_samples": data.num_samples if data.kind == "synthetic" else None,
            "seed": data.seed, "image_key": data.image_key, "caption_key": data.caption_key}


def build_cache(cfg: config_lib.Config, out_dir: str) -> dict | None:
    """Write the cache ``cfg`` describes to ``out_dir``; returns the manifest on rank 0, None elsewhere."""
    if cfg.teachers is not None:
        raise UserError("clipdistill cache embeds one teacher: run it once per teacher of the ensemble, each with "
                        "its own teacher: section and --out directory (same data and cache settings)")
    if cfg.teacher.source in ("none", "cache"):
        raise UserError(f"clipdistill cache needs a teacher to run (teacher.source is '{cfg.teacher.source}'): "
                        f"set teacher.source to openclip, checkpoint or hf")
    ctx = distributed.setup()
    per_node = distributed.local_world_size()
    workers = dataloader_workers(cfg.data.workers, per_node, gpu=ctx.device.type == "cuda")
    threads, why = configure_threads(cfg.train.threads, per_node, gpu=ctx.device.type == "cuda")
    log.info("teacher %s %s on %s: %d threads (%s), %d DataLoader workers", cfg.teacher.source, cfg.teacher.model,
             ctx.device, threads, why, workers)
    # Random-weight teachers (pretrained "") are seeded like a training run, so a cache of one is reproducible.
    torch.manual_seed(cfg.train.seed)
    teacher = build.teacher_from(cfg.teacher, ctx.device)
    dataset = build.dataset_from(cfg.data)
    c = cfg.cache
    # Every rank writes (or checks) the same manifest: identical bytes, renamed into place, so no race matters.
    write_cache(dataset, teacher, out_dir, dataset_info=dataset_info(cfg.data), views=c.views, scale=cfg.data.scale,
                hflip=cfg.data.hflip, seed=c.seed, dtype=c.dtype, storage=c.format, shard_size=c.shard_size,
                batch_size=c.batch_size, workers=workers, rank=ctx.rank, world_size=ctx.world_size,
                progress=ctx.is_main and cfg.train.progress, finalize_when_done=False)
    distributed.barrier()
    if not ctx.is_main:
        return None
    missing = missing_shards(out_dir, read_manifest(out_dir)["num_shards"], c.format)
    if missing:
        raise UserError(f"{len(missing)} shards were not written (first: {missing[0]}); re-run to resume")
    return finalize(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill cache",
                                     description="Run the teacher once over a dataset and store its embeddings.")
    parser.add_argument("config", help="experiment YAML (its teacher, data and cache sections are used)")
    parser.add_argument("--out", required=True, help="cache directory (resumes if it holds a partial cache)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cache.views=4 cache.dtype=bf16 "
                        "(every key, its default and meaning: clipdistill config [SECTION])")
    args = parser.parse_intermixed_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    ensure_writable_dir(args.out, what="cache directory")  # before loading the teacher and reading data
    try:
        manifest = build_cache(cfg, args.out)
    finally:
        distributed.teardown()
    if manifest is not None:
        log.info("cache complete: %d samples (%d images), %d skipped, in %s", manifest["count"], manifest["images"],
                 sum(manifest["skipped"].values()), args.out)
    return 0
