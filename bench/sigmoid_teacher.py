"""A sigmoid (SigLIP-style) teacher on the procedural data, and the same student distilled from it (issue 16).

    python bench/sigmoid_teacher.py --out runs/sigmoid-teacher --teacher-steps 400 --student-steps 240 --seeds 0,1,2

bench/ablation.py's synthetic setup (data, presets, schedule, a 4-view teacher cache), except that the teacher
trains with the ``siglip`` loss (it gets a learnable logit bias, init −10) instead of ``clip``. Students:

    sigmoid_kd  clip + sigmoid_kd   soft targets σ(τ_t t_v·t_t + b_t) from the teacher's own scale and bias
    clipkd      clip + crd + fd + icl   the softmax recipe as the ablation runs it (crd's teacher temperature:
                                        the teacher's logit_scale, here a sigmoid scale)
    baseline    clip alone          no teacher: the ablation's baseline runs; link DIR/baseline and
                                    DIR/seedN/baseline to them and they are reused instead of retrained
    sigmoid_kd_w0.1, _w0.01         clip + sigmoid_kd at lighter weights
    siglip      siglip alone        a sigmoid student (learnable bias, init −10), no teacher
    siglip_sigmoid_kd  siglip + sigmoid_kd   the sigmoid student distilled: its scale and bias are sigmoid ones
    views_only, siglip_views_only   the no-teacher rows on the cache's replayed views (bench/ablation.py's
                                    control; views_only can be linked from the ablation: same views)

Every student keeps its task loss (clip, or siglip in the last two rows), so the KD term is the only
difference between a row and its no-teacher row, as in the ablation. Writes DIR/ablation.json/.md/.png
(mean ± sd over seeds) like bench/ablation.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import ablation

METHODS = {"baseline": ablation.METHODS["baseline"], "views_only": ablation.METHODS["views_only"],
           "sigmoid_kd": {"clip": {"weight": 1.0}, "sigmoid_kd": {"weight": 1.0}},
           "clipkd": ablation.METHODS["clipkd"],
           # Lighter weights, and a sigmoid (siglip) student, whose scale and bias mean what the teacher's do
           # (a clip student shares its one scale between the softmax task loss and sigmoid_kd).
           **{f"sigmoid_kd_w{w}": {"clip": {"weight": 1.0}, "sigmoid_kd": {"weight": w}} for w in (0.1, 0.01)},
           "siglip": {"siglip": {"weight": 1.0}},
           "siglip_views_only": {"siglip": {"weight": 1.0}, "fd": {"weight": 1e-6}},  # ablation.py's views_only
           "siglip_sigmoid_kd": {"siglip": {"weight": 1.0}, "sigmoid_kd": {"weight": 1.0}}}


def sigmoid_setup(out: Path, args) -> dict:
    """The ablation's synthetic setup with a ``siglip`` teacher."""
    setup = ablation.synthetic_setup(out, args)
    setup["teacher"] = ablation.merged(setup["teacher"], {"losses": {"siglip": {"weight": 1.0}}})
    return setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ablation.common_arguments(parser, list(METHODS))
    args = parser.parse_args(argv)
    names = ablation.start(args, list(METHODS))
    out = Path(args.out)
    setup = sigmoid_setup(out, args)
    teacher_run, teacher_results = ablation.train_teacher(setup, out, args.progress)
    teacher = ablation.cached_teacher(setup, out, teacher_run, 4, args.progress)
    manifest = json.loads((out / "teacher_cache" / "manifest.json").read_text())
    ablation.log.info("sigmoid teacher: logit_scale %s, logit_bias %s", manifest.get("logit_scale"),
                      manifest.get("logit_bias"))
    ablation.train_students(setup, out, teacher, lambda name: {"losses": METHODS[name]}, names, args.seeds,
                            "Students of a sigmoid (siglip) teacher on synthetic",
                            table={"teacher": {0: ablation.row(teacher_results)}}, progress=args.progress)


if __name__ == "__main__":
    main()
