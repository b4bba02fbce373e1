"""``clipdistill demo``: a real distillation, offline, on a laptop, in minutes.

1. Generate the procedural shapes corpus (captions like "a large red circle left of a small blue square").
2. Train a teacher (the larger preset) on the whole corpus, as a LAION-400M CLIP is trained on far more
   data than the student will see. The students use that run as their teacher (``teacher.source=checkpoint``,
   ``teacher.path=OUT/teacher``: its newest checkpoint, its architecture from its config).
3. Distill the small student on a subset with the CLIP-KD recipe: clip + FD + CRD + ICL.
4. Train the same student on the same subset with the CLIP loss alone (the baseline).
4b. CLIP-CID: embed the subset with the teacher (``cache``), keep its semantically balanced 56.3 % (``curate``),
   cluster it for pseudo-labels (``cluster``), and distill the same student on the kept part with
   clip + cid_cluster + cid_instance.
5. Evaluate all three on held-out images (retrieval with 5 captions each, zero-shot classification)
   and write ``summary.json``, ``summary.md`` and ``summary.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from clipdistill import config as config_lib
from clipdistill.atomic import write_atomic, write_text_atomic
from clipdistill.curate.recipe import cid_losses, prepare_cid_data
from clipdistill.train.loop import run

log = logging.getLogger("clipdistill.demo")

# Everything the three runs share: the corpus, the held-out sets, the optimizer.
COMMON = [
    "data.kind=synthetic", "data.num_samples=20000", "data.seed=0",
    "eval.num_images=500", "eval.retrieval=synthetic", "eval.zero_shot=synthetic",
    "train.log_every=20", "train.save_every=1000000", "train.keep_checkpoints=1",
    "optim.lr=1e-3", "optim.warmup_steps=30",
]
TEACHER = ["student.model=tiny-teacher", "train.steps=400", "train.batch_size=128", "data.subset=0"]
STUDENT = ["student.model=tiny", "train.steps=240", "train.batch_size=128", "data.subset=2000"]
# --quick: the same pipeline in seconds (for tests); its numbers mean nothing, and it says so.
QUICK = ["train.steps=3", "train.batch_size=16", "eval.num_images=48", "data.workers=0"]
QUICK_NOTE = "--quick: 3 training steps per model, only to check the pipeline runs; these numbers mean nothing"
KD_LOSSES = ["losses.clip.weight=1.0", "losses.fd.weight=3.9", "losses.crd.weight=1.0", "losses.icl.weight=1.0"]


def _cid_overrides(out: Path, teacher_spec: list[str], quick: bool, progress: bool) -> list[str]:
    """CLIP-CID on the student subset: teacher-embed it, keep its balanced 56.3 %, cluster for pseudo-labels."""
    # The subset is the corpus's first rows, and a synthetic row depends only on (seed, index): a corpus
    # of that many rows is the subset.
    subset = config_lib.load(None, teacher_spec + ["data.kind=synthetic", "data.seed=0", "data.workers=0",
                                                   f"data.num_samples={256 if quick else 2000}",
                                                   f"train.progress={str(progress).lower()}"])
    cid = prepare_cid_data(subset, out_dir=out / "cid", label_clusters=8 if quick else 64, progress=progress)
    losses = [f"losses.{name}.{key}={value}" for name, spec in cid_losses(cid.centroids).items()
              for key, value in spec.items()]
    return losses + [f"data.keep={cid.keep}"]


def _percent_summary(results: dict) -> dict:
    metrics = results["metrics"]
    return {
        "retrieval_mean_recall": 100 * metrics["retrieval_mean_recall"],
        "zeroshot_top1": 100 * metrics["acc1"],
        "params": results["params"],
        "seconds": round(results["seconds"], 1),
    }


def _train(name: str, out: Path, overrides: list[str], progress: bool, quick: bool) -> dict:
    log.info("=== %s ===", name)
    cfg = config_lib.load(None, COMMON + overrides + [f"train.progress={str(progress).lower()}"]
                          + (QUICK if quick else []))
    return run(cfg, out / name)


def write_summary(summary: dict, out: Path, note: str = "") -> None:
    """summary.json, summary.md and summary.png; ``note`` (if any) is printed under the table and shown on both."""
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    rows = ["| model | retrieval mean recall (%) | zero-shot top-1 (%) | params | seconds |",
            "|---|---:|---:|---:|---:|"]
    for name, r in summary.items():
        rows.append(f"| {name} | {r['retrieval_mean_recall']:.1f} | {r['zeroshot_top1']:.1f} | "
                    f"{r['params'] / 1e6:.2f} M | {r['seconds']:.0f} |")
    if note:
        rows.append(f"\n**{note}**")
    write_text_atomic(out / "summary.md", "\n".join(rows) + "\n")
    _plot(summary, out / "summary.png", note)
    print("\n".join(rows))


def _plot(summary: dict, path: Path, note: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = summary_figure(summary, note)
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=120))
    plt.close(fig)


def summary_figure(summary: dict, note: str = ""):
    """Both metrics as bar charts, one bar per model, its value above it; ``note`` as the figure's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    # "student_baseline" and its neighbours overlap as one-line tick labels: "student" on a line of its own.
    labels = [name.replace("_", "\n", 1) for name in names]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, title in zip(axes, ("retrieval_mean_recall", "zeroshot_top1"),
                              ("retrieval mean recall (%)", "zero-shot top-1 (%)")):
        values = [summary[n][key] for n in names]
        ax.bar(labels, values, color=["#555555", "#2a7ab9", "#bbbbbb", "#3a9a5b"])
        ax.set_title(title)
        ax.set_ylim(0, 1.15 * max(max(values), 1.0))  # room for the value above the tallest bar
        for i, value in enumerate(values):
            ax.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    if note:
        fig.suptitle(note, color="#b00000", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true", help="a few steps only, to check the pipeline (numbers meaningless)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.time()
    progress = not args.no_progress
    if args.quick:
        print(QUICK_NOTE, flush=True)

    teacher = _train("teacher", out, TEACHER, progress, args.quick)
    teacher_spec = ["teacher.source=checkpoint", f"teacher.path={out / 'teacher'}"]  # the run is the teacher
    student_kd = _train("student_kd", out, STUDENT + KD_LOSSES + teacher_spec, progress, args.quick)
    baseline = _train("student_baseline", out, STUDENT + ["losses.clip.weight=1.0"], progress, args.quick)
    cid = _cid_overrides(out, teacher_spec, args.quick, progress)
    student_cid = _train("student_cid", out, STUDENT + cid + teacher_spec, progress, args.quick)

    summary = {name: _percent_summary(r) for name, r in
               (("teacher", teacher), ("student_kd", student_kd), ("student_baseline", baseline),
                ("student_cid", student_cid))}
    write_summary(summary, out, QUICK_NOTE if args.quick else "")
    log.info("demo finished in %.0f s; results in %s", time.time() - started, out)
    return 0
