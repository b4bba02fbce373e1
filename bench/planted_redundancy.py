"""Does semantic balancing beat a random subset of equal size? A fair test on planted, known redundancy.

    python bench/planted_redundancy.py --out runs/planted --teacher-steps 400 --student-steps 240 --seeds 0,1,2

1. **Teacher**: ``tiny-teacher`` trained on the *clean* procedural corpus (bench/ablation.py's synthetic
   setup, 20 000 pairs; reused when DIR/teacher holds it). It never sees the planted copies.
2. **Planted set** (``planted/``): 2 000 rows as JPEG files + a CSV. Of its scenes (the synthetic training
   stream's first ones), some get a heavy-tailed (Zipf) number of near-copies until 40 % of the rows are
   copies: each copy re-renders the scene with its objects moved, resized and recoloured a little, is
   downscaled and recompressed (JPEG quality 25-85), and gets another true caption (word order,
   synonyms). Ground truth: ``truth.npz`` (``group``: the scene of each row, ``copy``: 0 for the original).
3. **Clean set** (``clean/``): the same number of distinct scenes, written the same way: the negative control.
4. **ε without a target fraction**: a separate labelled *pool* (another data seed, 30 % copies) is planted the
   same way; ε for each mode is the one whose removals have the best F1 against the pool's ground truth.
   Nothing looks at how much of the planted set it removes.
5. **Arms** on the planted set: ``full``; ``cid`` (``clipdistill curate --threshold ε``, group-mean survivor);
   ``semdedup`` (``--mode semdedup --threshold ε'``); ``oracle`` (the originals); ``random`` (as many rows as
   ``cid`` keeps, a new draw per seed). On the clean set: ``clean_full`` and ``clean_cid`` (same ε).
6. **Students**: ``tiny``, CLIP loss alone (the subset is the only difference, as bench/ablation.py's
   ``baseline_balanced``/``baseline_random``), the same steps, batch and optimiser as the ablation's students,
   one run per seed; evaluated on the clean held-out synthetic retrieval set (1 000 images x 5 captions).

Writes DIR/planted.json (selection sweep, per-arm removal precision/recall, per-seed recalls) and
DIR/planted.md (the table). Killed, the same command reuses every finished step.

Removal precision/recall: a group of g planted rows (an original and its copies) may lose g - 1 rows;
true removals are Σ_groups min(removed in group, g - 1). Precision = true / removed, recall = true / copies.
Removing a whole group counts g - 1 true and one false (the scene is lost).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ablation.py, the setup the students share
import ablation  # noqa: E402

from clipdistill import config as config_lib  # noqa: E402
from clipdistill.data.synthetic import Scene, SceneObject, SyntheticPairs, paraphrases, render  # noqa: E402

log = logging.getLogger("clipdistill.planted")

IMAGE_PX = 64  # as SyntheticPairs renders; the students' transform resizes to their 32 px
ORIGINAL_QUALITY = 95
COPY_QUALITY = (25, 85)
COPY_SCALE = (0.6, 1.0)  # a copy is downscaled by this factor before recompression (web re-uploads)
ZIPF_A, MAX_COPIES = 2.0, 60
# Caption paraphrases beyond the corpus's own (which already vary word order and relation words).
SYNONYMS = {"picture": ("photo", "image"), "large": ("big",), "small": ("little",), "shapes": ("objects",)}
ARMS = ("full", "cid", "semdedup", "oracle", "random", "clean_full", "clean_cid")


# ----------------------------------------------------------------------------- planting

@dataclass
class Plan:
    """Row r shows scene ``group[r]``; ``copy[r]`` is 0 for the scene's original, k > 0 for its k-th copy."""

    group: np.ndarray
    copy: np.ndarray

    @property
    def redundant(self) -> np.ndarray:
        return self.copy > 0


def copy_counts(n_scenes: int, n_copies: int, rng: np.random.Generator) -> np.ndarray:
    """Copies per scene: Zipf-distributed (a = 2, at most MAX_COPIES) on randomly chosen scenes, summing to
    exactly ``n_copies`` (the last draw is cut). Most copied scenes get one copy, a few get dozens."""
    counts = np.zeros(n_scenes, dtype=np.int64)
    for scene in rng.permutation(n_scenes):
        left = n_copies - counts.sum()
        if left <= 0:
            break
        counts[scene] = min(left, min(int(rng.zipf(ZIPF_A)), MAX_COPIES))
    if counts.sum() < n_copies:
        raise ValueError(f"{n_scenes} scenes cannot hold {n_copies} copies of at most {MAX_COPIES} each")
    return counts


def plan_rows(n_rows: int, redundant_fraction: float, seed: int) -> Plan:
    """Which scene each of ``n_rows`` rows shows: round(fraction · n_rows) rows are copies; rows shuffled."""
    n_copies = int(round(redundant_fraction * n_rows))
    n_scenes = n_rows - n_copies
    counts = copy_counts(n_scenes, n_copies, np.random.default_rng([seed, 1]))
    group = np.repeat(np.arange(n_scenes), counts + 1)
    copy = np.concatenate([np.arange(c + 1) for c in counts])
    order = np.random.default_rng([seed, 2]).permutation(n_rows)  # copies must not be found by position
    return Plan(group=group[order], copy=copy[order])


def jittered(scene: Scene, rng: np.random.Generator, size_px: int = IMAGE_PX) -> Scene:
    """The same scene re-rendered: each object moved by up to 4 % of the side, resized by up to ±7 %, its
    box kept inside the image; the background shade shifted a little. Colours are jittered by ``render``."""
    objects = []
    for obj in scene.objects:
        half = obj.half * rng.uniform(0.93, 1.07)
        x, y = (np.clip(c + rng.uniform(-0.04, 0.04) * size_px, half + 1, size_px - half - 1) for c in obj.center)
        objects.append(SceneObject(obj.color, obj.shape, obj.size, (float(x), float(y)), float(half)))
    background = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(scene.background, rng.integers(-6, 7, size=3)))
    return replace(scene, objects=tuple(objects), background=background)


def paraphrased(scene: Scene, rng: np.random.Generator) -> str:
    """One of the scene's true captions, each word with a synonym half the time."""
    captions = paraphrases(scene)
    words = captions[rng.integers(len(captions))].split()
    return " ".join(SYNONYMS[w][rng.integers(len(SYNONYMS[w]))] if w in SYNONYMS and rng.random() < 0.5 else w
                    for w in words)


def row_image_and_caption(data_seed: int, group: int, copy: int):
    """(PIL image, caption, JPEG quality) of one planted row. An original is the synthetic training stream's
    sample ``group`` exactly as SyntheticPairs gives it; a copy re-renders that sample's scene."""
    corpus = SyntheticPairs(group + 1, seed=data_seed, image_size=IMAGE_PX)
    if copy == 0:
        sample = corpus[group]
        return sample["image"], sample["caption"], ORIGINAL_QUALITY
    scene, rng = corpus.scene(group), np.random.default_rng([data_seed, 7, group, copy])
    image = render(jittered(scene, rng), IMAGE_PX, rng)
    side = int(round(IMAGE_PX * rng.uniform(*COPY_SCALE)))
    image = image.resize((side, side))
    return image, paraphrased(scene, rng), int(rng.integers(COPY_QUALITY[0], COPY_QUALITY[1] + 1))


def write_set(out_dir: Path, plan: Plan, data_seed: int) -> Path:
    """JPEG files, ``pairs.csv`` (filepath, title; tab-separated) and ``truth.npz``; reused when complete."""
    csv_path = out_dir / "pairs.csv"
    if csv_path.is_file() and (out_dir / "truth.npz").is_file():
        return csv_path
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "pairs.tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for r, (group, copy) in enumerate(zip(plan.group, plan.copy)):
            image, caption, quality = row_image_and_caption(data_seed, int(group), int(copy))
            name = f"images/{r:06d}.jpg"
            image.save(out_dir / name, quality=quality)
            writer.writerow([name, caption])
    np.savez(out_dir / "truth.npz", group=plan.group, copy=plan.copy, data_seed=data_seed)
    (out_dir / "pairs.tmp").rename(csv_path)  # last: its presence says the set is complete
    return csv_path


def read_plan(out_dir: Path) -> Plan:
    truth = np.load(out_dir / "truth.npz")
    return Plan(group=truth["group"], copy=truth["copy"])


# ----------------------------------------------------------------------------- judging removals

def removal_quality(keep: np.ndarray, plan: Plan) -> dict:
    """Precision and recall of the removed rows against the planted groups (see the module docstring)."""
    removed = np.ones(len(plan.group), dtype=bool)
    removed[keep] = False
    sizes = np.bincount(plan.group)
    removed_per_group = np.bincount(plan.group[removed], minlength=len(sizes))
    true = int(np.minimum(removed_per_group, sizes - 1).sum())
    copies = int((sizes - 1).sum())
    n_removed = int(removed.sum())
    return {"kept": int(len(keep)), "removed": n_removed, "removal": n_removed / len(plan.group),
            "precision": true / n_removed if n_removed else 1.0, "recall": true / copies if copies else 1.0,
            "scenes_lost": int((removed_per_group == sizes).sum())}


def similarity_profile(x: np.ndarray, plan: Plan) -> dict:
    """Quantiles (5, 25, 50, 75, 95 %) of each copy's cosine to its original and of each original's cosine to
    its nearest *other* original: how far apart planted and natural near-duplicates are in ``x``."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    originals = np.flatnonzero(plan.copy == 0)
    original_of = np.empty(plan.group.max() + 1, dtype=np.int64)
    original_of[plan.group[originals]] = originals
    copies = np.flatnonzero(plan.copy > 0)
    between = x[originals] @ x[originals].T
    np.fill_diagonal(between, -np.inf)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    profile = {"nearest_other_original": np.quantile(between.max(axis=1), levels).round(4).tolist()}
    if len(copies):
        to_original = np.einsum("ij,ij->i", x[copies], x[original_of[plan.group[copies]]])
        profile["copy_to_its_original"] = np.quantile(to_original, levels).round(4).tolist()
    return profile


def f1(quality: dict) -> float:
    p, r = quality["precision"], quality["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


def candidate_thresholds(scores: np.ndarray, most: int = 400) -> np.ndarray:
    """ε values that cut between consecutive distinct duplicate scores (each a different removal set), plus
    0 (nothing removed). Above ``most`` cuts: the half across the widest gaps (where a separable pool's
    best cut lies) and the rest evenly spread by rank (where an overlapping pool's lies)."""
    distinct = np.unique(scores[np.isfinite(scores)])[::-1].astype(np.float64)
    cuts, gaps = (distinct[:-1] + distinct[1:]) / 2, distinct[:-1] - distinct[1:]
    if len(cuts) > most:
        widest = np.argsort(-gaps, kind="stable")[: most // 2]
        spread = np.linspace(0, len(cuts) - 1, most - most // 2).round().astype(int)
        cuts = cuts[np.union1d(widest, spread)]
    return np.r_[0.0, 1.0 - cuts]


def choose_epsilon(x: np.ndarray, plan: Plan, *, mode: str, work_dir: Path, seed: int = 0,
                   most: int = 400) -> tuple[float, list]:
    """The ε whose removals from the labelled pool ``x`` have the best F1 against its ground truth (ties: the
    smaller ε, i.e. fewer removals). Each candidate is a real ``curate`` call; the k-means cells and the
    pairwise pass are computed once and reused (the work directory's fingerprint leaves out the threshold)."""
    from clipdistill.curate import curate
    from clipdistill.curate.resume import WorkDir

    def run(eps):
        return curate(x, mode=mode, threshold=float(eps), seed=seed, work=WorkDir(work_dir))

    sweep = []
    for eps in candidate_thresholds(run(0.0).scores, most):
        quality = removal_quality(run(eps).keep, plan)
        sweep.append({"epsilon": float(eps), "f1": f1(quality), **quality})
    best = max(sweep, key=lambda s: (round(s["f1"], 12), -s["epsilon"]))
    return best["epsilon"], sweep


# ----------------------------------------------------------------------------- pipeline

def setup(args) -> dict:
    """bench/ablation.py's synthetic setup: its teacher as is; students on a CSV of planted or clean rows."""
    base = ablation.synthetic_setup(Path(args.out), args)
    base["common"]["eval"]["num_images"] = args.eval_images
    base["student"]["train"]["batch_size"] = args.batch_size
    return base


def teacher_cache(csv_path: Path, teacher: dict, out: Path, progress: bool) -> Path:
    """The teacher's image embedding of every row (one whole-image view): ``clipdistill cache``."""
    from clipdistill.cache.command import build_cache
    from clipdistill.curate.recipe import whole_image_views

    data = ablation.merged(ablation.BASE, teacher, {"data": {"kind": "csv", "path": str(csv_path)},
                                                    "train": {"progress": progress}})
    build_cache(whole_image_views(config_lib.from_dict(data)), str(out))
    return out


def curated(cache: Path, out: Path, *, mode: str, epsilon: float) -> np.ndarray:
    """``clipdistill curate --embeddings CACHE --threshold ε``: the kept dataset rows (reused when written)."""
    from clipdistill.curate import command

    if not (out / "keep.npy").is_file():
        command.main(["--embeddings", str(cache), "--out", str(out), "--mode", mode, "--threshold", repr(epsilon),
                      "--no-progress"])
    return np.load(out / "keep.npy")


def embeddings(cache: Path) -> np.ndarray:
    from clipdistill.curate.sources import read_cache

    cached = read_cache(cache)
    x = np.empty_like(cached.image, dtype=np.float32)
    x[cached.dataset_rows] = cached.image  # dataset row order
    return x


def train_student(base: dict, csv_path: Path, keep: Path | None, seed: int, out: Path, progress: bool) -> dict:
    if (out / "results.json").is_file():
        return ablation.row(json.loads((out / "results.json").read_text()))
    from clipdistill.train.loop import run

    data = ablation.merged(ablation.BASE, base["common"], base["student"],
                           {"data": {"kind": "csv", "path": str(csv_path), "subset": 0, "keep": str(keep or "")},
                            "losses": ablation.METHODS["baseline"], "train": {"seed": seed, "progress": progress}})
    return ablation.row(run(config_lib.from_dict(data), out, overwrite=True))  # no results.json: unfinished


def keep_lists(out: Path, plan: Plan, cid: np.ndarray, semdedup: np.ndarray, clean_cid: np.ndarray,
               seeds: list[int]) -> dict:
    """Arm -> seed -> keep.npy path (None: every row). The random arm draws anew for each seed."""
    lists = out / "keep"
    lists.mkdir(exist_ok=True)

    def saved(name, rows):
        np.save(lists / f"{name}.npy", np.sort(np.asarray(rows, dtype=np.int64)))
        return lists / f"{name}.npy"

    fixed = {"full": None, "cid": saved("cid", cid), "semdedup": saved("semdedup", semdedup),
             "oracle": saved("oracle", np.flatnonzero(plan.copy == 0)), "clean_full": None,
             "clean_cid": saved("clean_cid", clean_cid)}
    arms = {arm: {s: path for s in seeds} for arm, path in fixed.items()}
    draw = {s: np.random.default_rng([s, 99]).choice(len(plan.group), len(cid), replace=False) for s in seeds}
    arms["random"] = {s: saved(f"random_seed{s}", rows) for s, rows in draw.items()}
    return {arm: arms[arm] for arm in ARMS}


def summary(per_seed: dict) -> dict:
    values = np.array(list(per_seed.values()))
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": per_seed}


def write_table(result: dict, out: Path) -> str:
    lines = ["| arm | rows | removed | precision | recall | scenes lost | mean R (mean ± sd) | per seed |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for arm, r in result["arms"].items():
        q, s = r["quality"], r.get("recall")
        score = f"**{s['mean']:.1f} ± {s['sd']:.1f}**" if s else "-"
        seeds = ", ".join(f"{v:.1f}" for v in s["per_seed"].values()) if s else ""
        lines.append(f"| {arm} | {q['kept']} | {100 * q['removal']:.1f} % | {q['precision']:.3f} | {q['recall']:.3f} "
                     f"| {q['scenes_lost']} | {score} | {seeds} |")
    eps = result["epsilon"]
    text = (f"ε chosen on the labelled pool (best F1): cid {eps['cid']:.4f}, semdedup {eps['semdedup']:.4f}\n\n"
            + "\n".join(lines) + "\n")
    (out / "planted.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=2000, help="rows of the planted and of the clean set")
    p.add_argument("--redundant", type=float, default=0.4, help="fraction of the planted set's rows that are copies")
    p.add_argument("--pool-rows", type=int, default=1000, help="rows of the labelled pool that ε is chosen on")
    p.add_argument("--pool-redundant", type=float, default=0.3)
    p.add_argument("--teacher", default="", help="a trained teacher run directory to use instead of training one")
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-steps", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=128, help="students' batch (the ablation's 128)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS), help="arms to train (all are curated and judged)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("clipdistill").setLevel(logging.INFO)
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    base = setup(args)
    if args.teacher:  # a finished run of the same setup (e.g. bench/ablation.py's DIR/teacher)
        teacher = {"teacher": {"source": "checkpoint", "path": str(Path(args.teacher).resolve())}}
        teacher_results = json.loads((Path(args.teacher) / "results.json").read_text())
    else:
        teacher, teacher_results = ablation.train_teacher(base, out, args.progress)

    # The planted set and the pool draw from different data seeds: no scene is in both.
    plans = {"planted": (plan_rows(args.rows, args.redundant, seed=0), 0),
             "clean": (plan_rows(args.rows, 0.0, seed=0), 0),
             "pool": (plan_rows(args.pool_rows, args.pool_redundant, seed=1), 1)}
    sets = {name: write_set(out / name, plan, data_seed) for name, (plan, data_seed) in plans.items()}
    caches = {name: teacher_cache(path, teacher, out / name / "cache", args.progress) for name, path in sets.items()}

    pool_x, pool_plan = embeddings(caches["pool"]), plans["pool"][0]
    epsilon, sweeps = {}, {}
    for mode in ("cid", "semdedup"):
        sweep_dir = out / "pool" / f"sweep_{mode}"
        epsilon[mode], sweeps[mode] = choose_epsilon(pool_x, pool_plan, mode=mode, work_dir=sweep_dir)
        log.info("ε(%s) = %.4f on the labelled pool", mode, epsilon[mode])
    plan, clean_plan = plans["planted"][0], plans["clean"][0]
    cid = curated(caches["planted"], out / "curated_cid", mode="cid", epsilon=epsilon["cid"])
    semdedup = curated(caches["planted"], out / "curated_semdedup", mode="semdedup", epsilon=epsilon["semdedup"])
    clean_cid = curated(caches["clean"], out / "curated_clean_cid", mode="cid", epsilon=epsilon["cid"])
    keeps = keep_lists(out, plan, cid, semdedup, clean_cid, seeds)

    result = {"teacher": ablation.row(teacher_results), "teacher_path": teacher["teacher"]["path"],
              "similarity": {name: similarity_profile(embeddings(caches[name]), plans[name][0]) for name in plans},
              "epsilon": epsilon, "sweeps": sweeps, "args": vars(args), "arms": {},
              "pool": {mode: next(s for s in sweeps[mode] if s["epsilon"] == epsilon[mode]) for mode in sweeps}}
    for arm, by_seed in keeps.items():
        first = by_seed[seeds[0]]
        arm_plan = clean_plan if arm.startswith("clean") else plan
        result["arms"][arm] = {"quality": removal_quality(np.load(first) if first else np.arange(args.rows), arm_plan)}
    recalls: dict = {arm: {} for arm in keeps}
    # Seed-major: a run cut short still has every arm at the first seeds.
    for seed in seeds:
        for arm in [a for a in ARMS if a in args.arms.split(",")]:
            recalls[arm][seed] = student_recall(arm, seed, keeps, base, sets, out, args)
            result["arms"][arm]["recall"] = summary(recalls[arm])
            (out / "planted.json").write_text(json.dumps(result, indent=2))
            print(write_table(result, out), flush=True)


def student_recall(arm: str, seed: int, keeps: dict, base: dict, sets: dict, out: Path, args) -> float:
    """The arm's student at this seed; an arm that keeps every row is the full arm's run (same data, same seed)."""
    keep = keeps[arm][seed]
    data = "clean" if arm.startswith("clean") else "planted"
    if keep is not None and len(np.load(keep)) == args.rows:
        full = "clean_full" if data == "clean" else "full"
        log.info("%s keeps every row: its student is the %s run", arm, full)
        arm, keep = full, None
    run_dir = out / "students" / f"{arm}_seed{seed}"
    return train_student(base, sets[data], keep, seed, run_dir, args.progress)["retrieval_mean_recall"]


if __name__ == "__main__":
    main()
