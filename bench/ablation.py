"""CLIP-KD's ablation, reproduced small: one teacher, then the same student with each distillation method.

    python bench/ablation.py --data synthetic --out runs/ablation-synthetic
    python bench/ablation.py --data flickr8k  --out runs/ablation-flickr8k [--flickr-dir ../shared/data/flickr8k]

The teacher is trained once (reused when DIR/teacher holds its results and a checkpoint) on the whole
training set; that run is the students' teacher (``teacher.source=checkpoint teacher.path=DIR/teacher``).
It embeds the students' rows once into a teacher cache (``clipdistill cache``, 4 augmented views per row;
``--teacher-cache-views 0`` runs the teacher live on every batch instead). The CLIP-CID rows run
``cache → curate → cluster`` on the student rows (clipdistill.curate.recipe). Every student trains on the
same fixed subset (the teacher has seen more data, as in the paper) for the same number of steps, then
is evaluated on held-out images with all their captions. Writes ``DIR/ablation.json`` (per method:
retrieval R@1/5/10 both directions, their mean, seconds), ``DIR/ablation.md`` and ``DIR/ablation.png``.
Killed, the same command reuses the teacher, the cache and every finished method.

``--seeds 0,1,2``: the teacher, its cache and the CID data are made once (seed 0); every student trains
once per seed (its init and data order), seed 0 in DIR/METHOD, seed N in DIR/seedN/METHOD. The report
gives each figure's mean ± sd over the finished seeds (sample sd), and the JSON each seed's row too.

synthetic: the procedural shapes corpus (20 000 pairs; students on the first 2 000).
flickr8k:  images downsized once to 80 px; teacher on all 6 000 train images x 5 captions; students on
           the first 2 000 images of Flickr_8k.trainImages.txt; evaluation on the 1 000 dev images, 5 captions each.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import os
import statistics
import time
from pathlib import Path

from clipdistill import config as config_lib
from clipdistill.curate.recipe import cid_losses, prepare_cid_data
from clipdistill.models.checkpoints import list_checkpoints
from clipdistill.train.loop import run

log = logging.getLogger("clipdistill.ablation")

# name -> losses section. "baseline" is the student alone; "clipkd" the paper's final recipe.
METHODS = {
    "baseline": {"clip": {"weight": 1.0}},
    # The control for the cache: KD rows replay the cache's stored views (4 per sample) where the baseline draws
    # fresh crops. fd at 1e-6 changes nothing else but makes the run read the teacher, so it sees those views.
    "views_only": {"clip": {"weight": 1.0}, "fd": {"weight": 1e-6}},
    "crd": {"clip": {"weight": 1.0}, "crd": {"weight": 1.0}},
    "fd": {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}},
    "mfd": {"clip": {"weight": 1.0}, "mfd": {"weight": 3.9, "mask_ratio": 0.75, "masked": "all"}},  # the earlier rows' mfd
    "gd": {"clip": {"weight": 1.0}, "gd": {"weight": 1.0}},
    **{f"gd_w{w}": {"clip": {"weight": 1.0}, "gd": {"weight": w}} for w in (0.3, 3.0)},  # issue 18: GD's weight
    "icl": {"clip": {"weight": 1.0}, "icl": {"weight": 1.0}},
    "afd": {"clip": {"weight": 1.0}, "afd": {"weight": 1.0}},
    "cross_kd": {"clip": {"weight": 1.0}, "cross_kd": {"weight": 1.0}},
    "soft_clip": {"clip": {"weight": 1.0}, "soft_clip": {"weight": 1.0}},
    "affinity": {"clip": {"weight": 1.0}, "affinity": {"weight": 1.0, "scale": 50.0}},
    "clipkd": {"clip": {"weight": 1.0}, "crd": {"weight": 1.0}, "fd": {"weight": 3.9}, "icl": {"weight": 1.0}},
    # issue 18: the reference's raw cross scale (κ = p from ln(1/0.07) = 2.659) against exp (κ = exp(p) from 1/0.07);
    # MFD's mask ratio, and masking every term (all) or only the feature term (feature_only).
    # (train.heads=shared is a train option, not a losses entry: see docs/results.md for its runs.)
    "icl_raw": {"clip": {"weight": 1.0}, "icl": {"weight": 1.0, "scale_param": "raw", "init_scale": 2.659}},
    "clipkd_raw": {"clip": {"weight": 1.0}, "crd": {"weight": 1.0}, "fd": {"weight": 3.9},
                   "icl": {"weight": 1.0, "scale_param": "raw", "init_scale": 2.659}},
    **{f"mfd_r{r}": {"clip": {"weight": 1.0}, "mfd": {"weight": 3.9, "mask_ratio": r, "masked": "all"}}
       for r in (0.25, 0.5)},
    **{f"mfd_feature_only_r{r}": {"clip": {"weight": 1.0},
                                  "mfd": {"weight": 3.9, "mask_ratio": r, "masked": "feature_only"}}
       for r in (0.25, 0.5, 0.75)},
}
RECALLS = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]

# Natural photos need more pixels than the shapes: the same tiny families at 64 px.
FLICKR_STUDENT = {"embed_dim": 64,
                  "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
FLICKR_TEACHER = {"embed_dim": 96,
                  "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}}


def synthetic_setup(out: Path, args) -> dict:
    common = {"data": {"kind": "synthetic", "num_samples": 20000, "seed": 0},
              "eval": {"retrieval": "synthetic", "zero_shot": "", "num_images": 1000}}
    return {"common": common,
            "teacher": {"student": {"model": "tiny-teacher"}, "data": {"subset": 0},
                        "train": {"steps": args.teacher_steps or 900}},
            "student": {"student": {"model": "tiny"}, "data": {"subset": 2000},
                        "train": {"steps": args.student_steps or 400}}}


def write_flickr_csv(flickr_dir: Path, path: Path, images: int = 0) -> int:
    """One row per (train image, caption), ordered by image; ``images`` > 0 keeps the first that many images."""
    captions: dict[str, list[str]] = {}
    for line in (flickr_dir / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            key, caption = line.split("\t", 1)
            captions.setdefault(key.split("#")[0], []).append(caption.strip())
    train = [n.strip() for n in (flickr_dir / "Flickr_8k.trainImages.txt").read_text().splitlines() if n.strip()]
    rows, partial = 0, path.with_name(f"{path.name}.{os.getpid()}.partial")  # per process: two benches at once
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for name in train[:images or None]:
            for caption in captions.get(name, [])[:5]:
                writer.writerow([str((flickr_dir / "images" / name).resolve()), caption])
                rows += 1
    partial.replace(path)  # atomic: a run reading the CSV meanwhile (another bench) sees the whole old or new file
    return rows


def downsized_copy(flickr_dir: Path, out_dir: Path, short_side: int = 80) -> Path:
    """Flickr8k with every image shrunk to ``short_side`` px (JPEG draft decoding), token and split files linked.

    The models see 64 px crops; decoding the full ~500x375 JPEGs every step would make the
    benchmark measure JPEG decoding on 2 cores, not distillation. Done once, reused.
    """
    from PIL import Image
    from tqdm import tqdm

    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt"):
        link = out_dir / name
        if not link.exists():
            link.symlink_to((flickr_dir / name).resolve())
    sources = sorted((flickr_dir / "images").iterdir())
    for source in tqdm(sources, desc=f"downsizing Flickr8k to {short_side} px", mininterval=5):
        target = images / source.name
        if target.exists():
            continue
        with Image.open(source) as image:
            image.draft("RGB", (short_side * 2, short_side * 2))
            image = image.convert("RGB")
            scale = short_side / min(image.size)
            image = image.resize((max(short_side, round(image.width * scale)),
                                  max(short_side, round(image.height * scale))), Image.BICUBIC)
            image.save(target.with_suffix(".tmp.jpg"), quality=95)
        target.with_suffix(".tmp.jpg").rename(target)
    return out_dir


def flickr_setup(out: Path, args) -> dict:
    flickr_dir = Path(args.flickr_dir)
    if not (flickr_dir / "Flickr8k.token.txt").is_file():
        raise SystemExit(f"Flickr8k not found in {flickr_dir} (expected Flickr8k.token.txt, images/)")
    out.mkdir(parents=True, exist_ok=True)
    flickr_dir = downsized_copy(flickr_dir, out / "flickr8k_80px")
    train_csv, student_csv = out / "flickr8k_train.csv", out / "flickr8k_students.csv"
    rows = write_flickr_csv(flickr_dir, train_csv)
    student_rows = write_flickr_csv(flickr_dir, student_csv, images=2000)
    log.info("wrote %s (%d pairs) and %s (%d pairs)", train_csv, rows, student_csv, student_rows)
    common = {"data": {"kind": "csv", "workers": 2},
              "eval": {"retrieval": f"flickr:{flickr_dir}:dev", "zero_shot": ""}}
    return {"common": common,
            "teacher": {"student": {"model": FLICKR_TEACHER}, "data": {"path": str(train_csv), "subset": 0},
                        "train": {"steps": args.teacher_steps or 1000}},
            "student": {"student": {"model": FLICKR_STUDENT}, "data": {"path": str(student_csv), "subset": 0},
                        "train": {"steps": args.student_steps or 400}}}


def merged(*parts: dict) -> dict:
    """Config sections, later parts over earlier ones, as a YAML's values over its ``base:``."""
    return functools.reduce(config_lib.deep_merge, parts, {})


BASE = {"optim": {"lr": 1e-3, "warmup_steps": 30}, "train": {"batch_size": 128, "log_every": 50,
                                                             "save_every": 1000000, "keep_checkpoints": 1}}


def train_teacher(setup: dict, out: Path, progress: bool) -> tuple[dict, dict]:
    """The teacher run (trained unless DIR/teacher already holds it) and the ``teacher`` section naming it."""
    run_dir = out / "teacher"
    teacher = {"teacher": {"source": "checkpoint", "path": str(run_dir)}}  # its architecture: from its config
    if (run_dir / "results.json").is_file() and list_checkpoints(run_dir / "checkpoints"):
        log.info("reusing teacher %s", run_dir)
        return teacher, json.loads((run_dir / "results.json").read_text())
    data = merged(BASE, setup["common"], setup["teacher"], {"train": {"progress": progress}})
    return teacher, run(config_lib.from_dict(data), run_dir)


def cached_teacher(setup: dict, out: Path, teacher: dict, views: int, progress: bool) -> dict:
    """Embed the students' rows once with the teacher, ``views`` augmented crops each (``clipdistill cache``).

    Every KD run then replays stored crops and costs what the student alone costs; the teacher's
    forward passes are paid once instead of once per method. Resumes if killed.
    """
    from clipdistill.cache.command import build_cache

    cache_dir = out / "teacher_cache"
    data = merged(BASE, setup["common"], setup["student"], teacher, {"train": {"progress": progress},
                                                                     "cache": {"views": views}})
    build_cache(config_lib.from_dict(data), str(cache_dir))
    return {"teacher": {"source": "cache", "path": str(cache_dir)}}


def row(results: dict) -> dict:
    metrics = results["metrics"]
    return {"retrieval_mean_recall": 100 * metrics["retrieval_mean_recall"],
            **{k: 100 * metrics[k] for k in RECALLS}, "seconds": round(results["seconds"], 1)}


FIGURES = ["retrieval_mean_recall", *RECALLS, "seconds"]


def aggregate(per_seed: dict[int, dict]) -> dict:
    """One method's rows over seeds: each figure's mean, ``sd`` (sample sd; None for one seed), the seeds' rows.

    The mean sits under the figure's own key, so a reader of the single-seed table reads the mean.
    """
    seeds = sorted(per_seed)
    columns = {k: [per_seed[seed][k] for seed in seeds] for k in FIGURES}
    return {**{k: statistics.fmean(v) for k, v in columns.items()},
            "sd": {k: statistics.stdev(v) if len(v) > 1 else None for k, v in columns.items()},
            "seeds": {str(seed): per_seed[seed] for seed in seeds}}


def student_dir(out: Path, name: str, seed: int) -> Path:
    """Seed 0 keeps the single-seed path (DIR/METHOD), so its finished runs are reused; seed N: DIR/seedN/METHOD."""
    return out / name if seed == 0 else out / f"seed{seed}" / name


def train_students(setup: dict, out: Path, teacher: dict, overrides, names: list[str], seeds: list[int],
                   title: str, table: dict, progress: bool = False) -> dict:
    """Every method once per seed, seed by seed (a cut-short run leaves whole seeds); the table after each.

    ``overrides(name)`` is the method's config part (its losses, a keep list); ``table`` holds rows that
    are not students (the teacher's), as {name: {seed: row}}. A finished run (results.json) is reused.
    """
    for seed in seeds:
        for name in names:
            run_dir = student_dir(out, name, seed)
            if (run_dir / "results.json").is_file():  # a rerun after a kill only trains what is missing
                log.info("reusing %s", run_dir / "results.json")
                results = json.loads((run_dir / "results.json").read_text())
            else:
                started = time.time()
                data = merged(BASE, setup["common"], setup["student"], {"train": {"progress": progress}},
                              {} if name == "baseline" else teacher, overrides(name), {"train": {"seed": seed}})
                # no results.json: a killed run (no checkpoint at save_every=1e6), so start it again
                results = run(config_lib.from_dict(data), run_dir, overwrite=True)
                log.info("%s seed %d: mean recall %.2f %% (%.0f s)", name, seed,
                         100 * results["metrics"]["retrieval_mean_recall"], time.time() - started)
            table.setdefault(name, {})[seed] = row(results)
            write_outputs({n: aggregate(rows) for n, rows in table.items()}, out, title)
    return {n: aggregate(rows) for n, rows in table.items()}


# CLIP-CID (issue #5): CID on the whole student subset and on its semantically balanced part (43.7 % removed),
# the CLIP-KD recipe on that same balanced part, and no KD on the balanced part and on a random part of the
# same size (balanced vs random compared with the same method, so the subset is the only difference).
CID_METHODS = ("cid_full", "cid_balanced", "clipkd_balanced", "baseline_balanced", "baseline_random")


def prepare_cid(setup: dict, out: Path, teacher: dict, progress: bool):
    """``cache → curate → cluster`` of the student subset: balanced keep list, random keep list, cluster centres."""
    subset = merged(BASE, setup["common"], setup["student"], teacher, {"train": {"progress": progress}})
    if subset["data"].get("subset"):  # the synthetic students' first rows: a corpus of that size is exactly them
        subset = merged(subset, {"data": {"num_samples": subset["data"]["subset"], "subset": 0}})
    # In the teacher's image space, at the image level: a Flickr image is one row with its 5 captions, kept or
    # removed together (issue 18: curating caption rows in image ⊕ text space mostly thinned captions).
    return prepare_cid_data(config_lib.from_dict(subset), out_dir=out / "cid", space="image", progress=progress)


def cid_overrides(name: str, cid) -> dict:
    losses = {"cid_full": cid_losses(cid.centroids), "cid_balanced": cid_losses(cid.centroids),
              "clipkd_balanced": METHODS["clipkd"], "baseline_balanced": METHODS["baseline"],
              "baseline_random": METHODS["baseline"]}[name]
    keep = {"cid_full": "", "cid_balanced": cid.keep, "clipkd_balanced": cid.keep, "baseline_balanced": cid.keep,
            "baseline_random": cid.random_keep}
    return {"losses": losses, "data": {"keep": str(keep[name])}}


def mean_sd(r: dict, key: str) -> str:
    """``31.8 ± 0.4``; a one-seed figure without the ±."""
    sd = r["sd"][key]
    return f"{r[key]:.1f}" if sd is None else f"{r[key]:.1f} ± {sd:.1f}"


def paired_difference(method: dict, reference: dict, key: str = "retrieval_mean_recall") -> dict | None:
    """``method`` − ``reference`` seed by seed (the same seed: the same init and data order), over their common seeds.

    ``real``: at least two seeds, every seed's difference has the same sign, and the mean difference is
    more than twice its standard error (sd/√n). None without a common seed.
    """
    seeds = sorted(set(method["seeds"]) & set(reference["seeds"]), key=int)
    if not seeds:
        return None
    deltas = [method["seeds"][s][key] - reference["seeds"][s][key] for s in seeds]
    mean = statistics.fmean(deltas)
    sd = statistics.stdev(deltas) if len(deltas) > 1 else None
    same_sign = all(d > 0 for d in deltas) or all(d < 0 for d in deltas)
    real = sd is not None and same_sign and abs(mean) > 2 * sd / len(deltas) ** 0.5
    return {"mean": mean, "sd": sd, "seeds": seeds, "per_seed": deltas, "real": real}


def difference_cell(delta: dict | None) -> str:
    if delta is None:
        return ""
    text = f"{delta['mean']:+.1f}" + ("" if delta["sd"] is None else f" ± {delta['sd']:.1f}")
    return text + (" (real)" if delta["real"] else "")


def write_outputs(table: dict, out: Path, title: str) -> None:
    """``table``: {name: aggregate(...)}. Writes DIR/ablation.json, .md (mean ± sd over seeds) and .png.

    Each student row also gets its paired difference to ``baseline`` (``vs_baseline``, see paired_difference).
    """
    for name, r in table.items():
        if "baseline" in table and name not in ("teacher", "baseline"):
            r["vs_baseline"] = paired_difference(r, table["baseline"])
    (out / "ablation.json").write_text(json.dumps(table, indent=2))
    lines = [f"| method | seeds | mean R | Δ vs baseline | "
             f"{' | '.join(k.replace('_retrieval_recall', '') for k in RECALLS)} | seconds |",
             "|---|---:|---:|---:|" + "---:|" * len(RECALLS) + "---:|"]
    for name, r in table.items():
        cells = " | ".join(mean_sd(r, k) for k in RECALLS)
        lines.append(f"| {name} | {len(r['seeds'])} | **{mean_sd(r, 'retrieval_mean_recall')}** "
                     f"| {difference_cell(r.get('vs_baseline'))} | {cells} | {r['seconds']:.0f} |")
    note = ("Mean ± sample sd over the seeds counted in the `seeds` column. Δ vs baseline: mean R minus the "
            "baseline's, paired by seed (mean ± sd of the per-seed differences); (real): every seed agrees in "
            "sign and the mean is over twice its standard error.")
    (out / "ablation.md").write_text(f"{title}\n\n{note}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    write_plot(table, out / "ablation.png", title)


def write_plot(table: dict, path: Path, title: str) -> None:
    """Bars at the mean, error bars one sd, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    means = [table[n]["retrieval_mean_recall"] for n in names]
    sds = [table[n]["sd"]["retrieval_mean_recall"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    colors = ["#444444" if n == "teacher" else "#bbbbbb" if n == "baseline" else "#2a7ab9" for n in names]
    ax.bar(names, means, yerr=sds, capsize=3, color=colors)
    for i, n in enumerate(names):
        values = [r["retrieval_mean_recall"] for r in table[n]["seeds"].values()]
        ax.plot([i] * len(values), values, "k.", markersize=3)
    ax.set_ylabel("retrieval mean recall (%)")
    ax.set_title(f"{title} (mean ± sd over seeds)")
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--seeds expects comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds expects distinct non-negative integers like 0,1,2, got {text!r}")
    return seeds


def common_arguments(parser: argparse.ArgumentParser, methods: list[str]) -> None:
    """The options of every ablation-style bench (this one, bench/sigmoid_teacher.py)."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default=",".join(methods), help="comma-separated, of " + ", ".join(methods))
    parser.add_argument("--teacher-steps", type=int, default=0)
    parser.add_argument("--student-steps", type=int, default=0)
    parser.add_argument("--seeds", type=seed_list, default=[0],
                        help="students' seeds (init, data order), e.g. 0,1,2: one teacher, cache and CID data; "
                             "each student once per seed (seed N > 0 in DIR/seedN/METHOD)")
    parser.add_argument("--progress", action="store_true")


def start(args: argparse.Namespace, methods: list[str]) -> list[str]:
    """The benches' logging, and the methods asked for (one line naming an unknown one)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("clipdistill").setLevel(logging.INFO)
    names = args.methods.split(",")
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, [*METHODS, *CID_METHODS])
    parser.add_argument("--data", choices=["synthetic", "flickr8k"], default="synthetic")
    parser.add_argument("--flickr-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    parser.add_argument("--teacher-cache-views", type=int, default=-1,
                        help="serve the teacher from a clipdistill cache with this many views per sample "
                             "(0 = live teacher on every batch; default 4)")
    args = parser.parse_args(argv)
    names = start(args, [*METHODS, *CID_METHODS])
    out = Path(args.out)
    setup = synthetic_setup(out, args) if args.data == "synthetic" else flickr_setup(out, args)

    teacher_run, teacher_results = train_teacher(setup, out, args.progress)
    views = args.teacher_cache_views if args.teacher_cache_views >= 0 else 4
    teacher = cached_teacher(setup, out, teacher_run, views, args.progress) if views else teacher_run
    cid = prepare_cid(setup, out, teacher_run, args.progress) if set(names) & set(CID_METHODS) else None

    def overrides(name: str) -> dict:
        return {"losses": METHODS[name]} if name in METHODS else cid_overrides(name, cid)

    title = f"CLIP-KD ablation on {args.data}"
    train_students(setup, out, teacher, overrides, names, args.seeds, title,
                   table={"teacher": {0: row(teacher_results)}}, progress=args.progress)


if __name__ == "__main__":
    main()
