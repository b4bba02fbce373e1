"""Does an ensemble of two different teachers distill a better student than either alone? (issue 19)

    python bench/ensemble.py --out runs/ensemble [--teacher-steps 400] [--student-steps 300] [--seeds 0,1,2]

Two teachers of different architectures are trained from scratch on the procedural shapes corpus as
bench/ablation.py's synthetic setup trains its teacher (same data, steps and optimizer): a ViT (the
``tiny-teacher`` preset) and a ResNet (open_clip's ModifiedResNet tower, :data:`RESNET_TEACHER`). Each
embeds the students' rows once into its own cache (``clipdistill cache``: same data, same views, so
the caches are an ensemble's). Then the same student (the ``tiny`` preset, the clipkd recipe: clip +
crd + fd + icl, bench/ablation.py's METHODS["clipkd"]) is distilled from the ViT alone, the ResNet alone
and both (``teachers:``, weight 1 each), for each seed. Writes ``DIR/ensemble.json`` (every run's
retrieval recalls) and ``DIR/ensemble.md`` (mean ± sd of the mean recall over seeds). A rerun reuses
every finished teacher, cache and student.

    python bench/ensemble.py --loss-cost [--batch 64]

times what more teachers add to a step's loss: the objective (clipkd recipe) forward and backward on
given embeddings, tiny widths (student 64, teachers 96), with 1, 2 and 3 teachers, interleaved rounds.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ablation import BASE, METHODS, merged, row, synthetic_setup  # noqa: E402

from clipdistill import config as config_lib  # noqa: E402
from clipdistill.cache.command import build_cache  # noqa: E402
from clipdistill.train.loop import run  # noqa: E402

log = logging.getLogger("clipdistill.ensemble")

# A ResNet tower of about the ViT teacher's width (embed 96, the same text tower as tiny-teacher).
RESNET_TEACHER = {"embed_dim": 96,
                  "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None},
                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}}
TEACHERS = {"vit": "tiny-teacher", "resnet": RESNET_TEACHER}
ARMS = ("vit", "resnet", "ensemble")
CACHE_VIEWS = 4


def results_of(run_dir: Path, data: dict) -> dict:
    """The run's results.json, training it first unless it is there."""
    if (run_dir / "results.json").is_file():
        log.info("reusing %s", run_dir)
        return json.loads((run_dir / "results.json").read_text())
    started = time.time()
    results = run(config_lib.from_dict(data), run_dir)
    log.info("%s: mean recall %.2f %% (%.0f s)", run_dir.name, 100 * results["metrics"]["retrieval_mean_recall"],
             time.time() - started)
    return results


def needed(arms: list[str]) -> list[str]:
    """The teachers these arms distill from (processes running different arms can share the work)."""
    return [name for name in TEACHERS if name in arms or "ensemble" in arms]


def train_teachers(setup: dict, out: Path, names: list[str], steps: dict) -> dict:
    """Each teacher's run (from scratch, as the ablation's teacher, ``steps[name]`` steps), by name."""
    return {name: results_of(out / f"teacher_{name}",
                             merged(BASE, setup["common"], setup["teacher"], {"student": {"model": TEACHERS[name]}},
                                    {"train": {"steps": steps[name]}}))
            for name in names}


def cache_teachers(setup: dict, out: Path, names: list[str]) -> dict:
    """One cache per teacher over the students' rows, with the same views: name -> teacher section."""
    sections = {}
    for name in names:
        teacher = {"teacher": {"source": "checkpoint", "path": str(out / f"teacher_{name}")}}
        data = merged(BASE, setup["common"], setup["student"], teacher, {"cache": {"views": CACHE_VIEWS}})
        build_cache(config_lib.from_dict(data), str(out / f"cache_{name}"))  # a complete cache is kept as it is
        sections[name] = {"source": "cache", "path": str(out / f"cache_{name}")}
    return sections


def arm_teachers(arm: str, caches: dict) -> dict:
    return {"teachers": [caches[name] for name in TEACHERS]} if arm == "ensemble" else {"teacher": caches[arm]}


def summary(table: dict, teachers: dict) -> str:
    """The markdown table: each teacher, then each arm's mean ± sd over seeds (and every seed's value)."""
    lines = ["| model | mean R (mean ± sd over seeds) | per seed |", "|---|---:|---|"]
    for name, results in teachers.items():
        lines.append(f"| teacher {name} | {100 * results['metrics']['retrieval_mean_recall']:.1f} | |")
    for arm, seeds in table.items():
        values = [r["retrieval_mean_recall"] for r in seeds.values()]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| student from {arm} | **{statistics.mean(values):.2f} ± {spread:.2f}** | "
                     + ", ".join(f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def loss_cost(batch: int, rounds: int = 60, teachers=(1, 2, 3)) -> dict:
    """Median ms of the clipkd objective's forward + backward with 1, 2, 3 teachers (interleaved rounds, so
    a change in the machine's load hits every count alike)."""
    import torch
    import torch.nn.functional as F

    from clipdistill.embeddings import Embeddings
    from clipdistill.ensemble import TeacherEnsemble
    from clipdistill.losses.objective import build_objective

    torch.manual_seed(0)
    objectives = {n: build_objective(METHODS["clipkd"], student_dim=64, teacher_dim=[96] * n) for n in teachers}
    unit = lambda: F.normalize(torch.randn(batch, 96), dim=-1)  # noqa: E731
    ensembles = {n: TeacherEnsemble.weighted([Embeddings(unit(), unit(), torch.tensor(50.0), normalized=True)
                                              for _ in range(n)], [1.0] * n) for n in teachers}
    times: dict = {n: [] for n in teachers}
    for _ in range(rounds):
        for n in teachers:
            image = torch.randn(batch, 64, requires_grad=True)
            text = torch.randn(batch, 64, requires_grad=True)
            student = Embeddings(image, text, torch.tensor(14.3, requires_grad=True))
            started = time.perf_counter()
            objectives[n](student, ensembles[n])[0].backward()
            times[n].append(1e3 * (time.perf_counter() - started))
    return {n: statistics.median(values) for n, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="run directory (required unless --loss-cost)")
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--resnet-teacher-steps", type=int, default=0,
                        help="the ResNet teacher's steps (default: --teacher-steps)")
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: vit, resnet, ensemble")
    parser.add_argument("--student-batch", type=int, default=128, help="the students' batch size")
    parser.add_argument("--loss-cost", action="store_true", help="only time the objective with 1, 2, 3 teachers")
    parser.add_argument("--batch", type=int, default=64, help="--loss-cost's batch")
    args = parser.parse_args()
    if args.loss_cost:
        costs = loss_cost(args.batch)
        print("\n".join(f"{n} teacher(s): {ms:.2f} ms per forward + backward" for n, ms in costs.items()))
        return
    if not args.out:
        parser.error("--out is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("clipdistill").setLevel(logging.INFO)
    out = Path(args.out)
    setup = synthetic_setup(out, args)
    setup["common"] = merged(setup["common"], {"train": {"progress": False}})
    # The students' rows as a corpus of their own (synthetic sample i does not depend on the corpus size), so
    # each cache embeds those rows only, not the teachers' whole corpus.
    rows = setup["student"]["data"]["subset"]
    setup["student"] = merged(setup["student"], {"data": {"num_samples": rows, "subset": 0},
                                                 "train": {"batch_size": args.student_batch}})
    arms = args.arms.split(",")
    steps = {"vit": args.teacher_steps, "resnet": args.resnet_teacher_steps or args.teacher_steps}
    teachers = train_teachers(setup, out, needed(arms), steps)
    caches = cache_teachers(setup, out, needed(arms))
    table: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed by seed: a cut-short run still has whole seeds
        for arm in arms:
            data = merged(BASE, setup["common"], setup["student"], {"losses": METHODS["clipkd"]},
                          arm_teachers(arm, caches), {"train": {"seed": seed}})
            table.setdefault(arm, {})[seed] = row(results_of(out / f"seed{seed}" / arm, data))
            name = "ensemble" if arms == list(ARMS) else "ensemble_" + "_".join(arms)
            (out / f"{name}.json").write_text(json.dumps({"teachers": {k: row(v) for k, v in teachers.items()},
                                                          "students": table}, indent=2))
            (out / f"{name}.md").write_text(summary(table, teachers) + "\n")
    print(summary(table, teachers))


if __name__ == "__main__":
    main()
