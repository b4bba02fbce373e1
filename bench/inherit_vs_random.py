"""An inherited student against a random-init one on Flickr8k, and the steps the random one needs to catch up.

    python bench/inherit_vs_random.py --out runs/inherit --teacher-run runs/ablation-flickr8k/teacher \
        --steps 300 --catch-up 600,1200 --seeds 0,1,2

The teacher is bench/ablation.py's Flickr8k teacher (``--teacher-run``: its run directory, whose parent holds
the ablation's 80 px copy and CSVs; without it, the ablation's teacher is trained into DIR/teacher).
``clipdistill inherit`` (uniform layers; heads, MLP channels
and dims by weight magnitude) turns it into the ablation's Flickr8k student architecture, written to
DIR/inherited_init. Then the ablation's student run, the ``clip`` loss alone, no teacher at training time:

    inherited_seedS            student.pretrained = the inherited weights, --steps steps
    random_seedS               random init, --steps steps
    random_{N}steps_seedS      random init, N steps for each N of --catch-up (its own cosine schedule)

A finished run (results.json) is reused, so a killed command resumes. Writes DIR/inherit.json (per arm: each
seed's retrieval mean recall, mean ± sd) and DIR/inherit.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import ablation
from clipdistill import config as config_lib
from clipdistill.models.checkpoints import list_checkpoints


def student_section(inherited: Path | None) -> dict:
    student = {"model": ablation.FLICKR_STUDENT}
    if inherited is not None:
        student["pretrained"] = str(inherited / "open_clip_model.safetensors")
    return {"student": student}


def inherit_student(teacher_run: Path, out: Path) -> Path:
    """The teacher's last checkpoint inherited into the ablation's student architecture (made once)."""
    from clipdistill.inherit.command import inherit_to_dir
    from clipdistill.models.presets import resolve_architecture

    folder = out / "inherited_init"
    if not (folder / "open_clip_model.safetensors").is_file():
        inherit_to_dir(resolve_architecture(ablation.FLICKR_TEACHER), resolve_architecture(ablation.FLICKR_STUDENT),
                       folder, pretrained=str(list_checkpoints(teacher_run / "checkpoints")[-1]))
    return folder


def arms(steps: int, catch_up: list[int], inherited: Path) -> dict[str, tuple[dict, int]]:
    """name -> (student section, steps)."""
    return {"inherited": (student_section(inherited), steps), "random": (student_section(None), steps),
            **{f"random_{n}steps": (student_section(None), n) for n in catch_up}}


def train_arm(setup: dict, run_dir: Path, student: dict, steps: int, seed: int) -> float:
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
    else:
        data = ablation.merged(ablation.BASE, setup["common"], setup["student"], student,
                               {"train": {"seed": seed, "steps": steps}, "losses": {"clip": {"weight": 1.0}}})
        results = ablation.run(config_lib.from_dict(data), run_dir, overwrite=True)  # no results: killed, start again
    return 100 * results["metrics"]["retrieval_mean_recall"]


def write_report(table: dict[str, dict[int, float]], out: Path, steps: int) -> None:
    summary = {name: {"seeds": {str(s): v for s, v in sorted(per_seed.items())},
                      "mean": statistics.fmean(per_seed.values()),
                      "sd": statistics.stdev(per_seed.values()) if len(per_seed) > 1 else None}
               for name, per_seed in table.items()}
    (out / "inherit.json").write_text(json.dumps(summary, indent=2))
    lines = ["| arm | steps | seeds | mean R (%) | per seed |", "|---|---:|---:|---:|---|"]
    for name, r in summary.items():
        arm_steps = int(name.split("_")[1].removesuffix("steps")) if name.startswith("random_") else steps
        sd = "" if r["sd"] is None else f" ± {r['sd']:.2f}"
        lines.append(f"| {name} | {arm_steps} | {len(r['seeds'])} | **{r['mean']:.2f}{sd}** | "
                     f"{', '.join(f'{v:.2f}' for v in r['seeds'].values())} |")
    (out / "inherit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--teacher-run", default="", help="the Flickr8k teacher's run directory (bench/ablation.py)")
    parser.add_argument("--flickr-dir",
                        default=str(Path(__file__).resolve().parents[1].parent / "shared/data/flickr8k"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--catch-up", default="", help="comma-separated step counts for random-init runs")
    parser.add_argument("--seeds", type=ablation.seed_list, default=[0, 1, 2])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("clipdistill").setLevel(logging.INFO)
    out = Path(args.out)
    teacher_run = Path(args.teacher_run) if args.teacher_run else out / "teacher"
    # The ablation's data (its 80 px copy and CSVs) next to the teacher's run, as bench/ablation.py made them.
    setup = ablation.flickr_setup(teacher_run.parent, argparse.Namespace(flickr_dir=args.flickr_dir, teacher_steps=0,
                                                                         student_steps=args.steps))
    if not args.teacher_run:
        ablation.train_teacher(setup, out, progress=False)
    catch_up = [int(n) for n in args.catch_up.split(",") if n.strip()]
    table: dict[str, dict[int, float]] = {}
    for seed in args.seeds:  # seed by seed: a cut-short command leaves whole seeds
        for name, (student, steps) in arms(args.steps, catch_up, inherit_student(teacher_run, out)).items():
            table.setdefault(name, {})[seed] = train_arm(setup, out / f"{name}_seed{seed}", student, steps, seed)
            write_report(table, out, args.steps)


if __name__ == "__main__":
    main()
