"""``clipdistill demo``: a real distillation, offline, on a laptop, in minutes.

1. Generate the procedural shapes corpus (captions like "a large red circle left of a small blue square").
2. Train a teacher (the larger preset) on the whole corpus, as a LAION-400M CLIP is trained on far more
   data than the student will see.
3. Distill the small student on a subset with the CLIP-KD recipe: clip + FD + CRD + ICL.
4. Train the same student on the same subset with the CLIP loss alone (the baseline).
4b. CLIP-CID: embed the subset with the teacher, keep its semantically balanced 56.3 % (``curate``), cluster it
   for pseudo-labels, and distill the same student on the kept part with clip + cid_cluster + cid_instance.
5. Evaluate all three on held-out images (retrieval with 5 captions each, zero-shot classification)
   and write ``summary.json``, ``summary.md`` and ``summary.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from clipdistill import config as config_lib
from clipdistill.atomic import write_atomic, write_text_atomic
from clipdistill.curate.recipe import cid_losses, prepare_cid_data
from clipdistill.data import SyntheticPairs
from clipdistill.models import load_teacher
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
# --quick: the same pipeline in seconds (for tests); its numbers mean nothing.
QUICK = ["train.steps=3", "train.batch_size=16", "eval.num_images=48", "data.workers=0"]
KD_LOSSES = ["losses.clip.weight=1.0", "losses.fd.weight=3.9", "losses.crd.weight=1.0", "losses.icl.weight=1.0"]


def _cid_overrides(out: Path, teacher_path: Path, quick: bool, progress: bool) -> list[str]:
    """CLIP-CID on the student subset: teacher-embed it, keep its balanced 56.3 %, cluster for pseudo-labels."""
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(teacher_path))
    cid = prepare_cid_data(teacher, SyntheticPairs(20000, seed=0), rows=256 if quick else 2000, out_dir=out / "cid",
                           label_clusters=8 if quick else 64, progress=progress)
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


def _export_teacher(run_dir: Path) -> Path:
    """The teacher run's last checkpoint, as a plain state_dict file a teacher loader accepts."""
    from clipdistill.train.checkpoint import list_checkpoints, load

    state = load(list_checkpoints(run_dir / "checkpoints")[-1])
    path = run_dir / "teacher.pt"
    torch.save(state["student"], path)
    return path


def _train(name: str, out: Path, overrides: list[str], progress: bool, quick: bool) -> dict:
    log.info("=== %s ===", name)
    cfg = config_lib.load(None, COMMON + overrides + [f"train.progress={str(progress).lower()}"]
                          + (QUICK if quick else []))
    return run(cfg, out / name)


def write_summary(summary: dict, out: Path) -> None:
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    rows = ["| model | retrieval mean recall (%) | zero-shot top-1 (%) | params | seconds |",
            "|---|---:|---:|---:|---:|"]
    for name, r in summary.items():
        rows.append(f"| {name} | {r['retrieval_mean_recall']:.1f} | {r['zeroshot_top1']:.1f} | "
                    f"{r['params'] / 1e6:.2f} M | {r['seconds']:.0f} |")
    write_text_atomic(out / "summary.md", "\n".join(rows) + "\n")
    _plot(summary, out / "summary.png")
    print("\n".join(rows))


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in zip(axes, ("retrieval_mean_recall", "zeroshot_top1"),
                              ("retrieval mean recall (%)", "zero-shot top-1 (%)")):
        ax.bar(names, [summary[n][key] for n in names], color=["#555555", "#2a7ab9", "#bbbbbb", "#3a9a5b"])
        ax.set_title(title)
        for i, n in enumerate(names):
            ax.text(i, summary[n][key], f"{summary[n][key]:.1f}", ha="center", va="bottom")
    fig.tight_layout()
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true", help="a few steps only, to check the pipeline (numbers meaningless)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.time()
    progress = not args.no_progress

    teacher = _train("teacher", out, TEACHER, progress, args.quick)
    teacher_path = _export_teacher(out / "teacher")
    teacher_spec = ["teacher.source=checkpoint", "teacher.model=tiny-teacher", f"teacher.path={teacher_path}"]
    student_kd = _train("student_kd", out, STUDENT + KD_LOSSES + teacher_spec, progress, args.quick)
    baseline = _train("student_baseline", out, STUDENT + ["losses.clip.weight=1.0"], progress, args.quick)
    cid = _cid_overrides(out, teacher_path, args.quick, progress)
    student_cid = _train("student_cid", out, STUDENT + cid + teacher_spec, progress, args.quick)

    summary = {name: _percent_summary(r) for name, r in
               (("teacher", teacher), ("student_kd", student_kd), ("student_baseline", baseline),
                ("student_cid", student_cid))}
    write_summary(summary, out)
    log.info("demo finished in %.0f s; results in %s", time.time() - started, out)
    return 0
