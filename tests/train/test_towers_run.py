"""Training runs with a reused teacher tower, captions present: the reused tower never moves, the other one does."""
import torch

from clipdistill import config as config_lib
from clipdistill.models import load_teacher
from clipdistill.models.towers import tower_of
from clipdistill.train import checkpoint
from clipdistill.train.loop import run

COMMON = ["student.model=tiny", "teacher.source=openclip", "teacher.model=tiny-teacher", "data.num_samples=64",
          "data.workers=0", "train.batch_size=8", "train.steps=2", "train.progress=false", "optim.warmup_steps=1",
          "eval.retrieval=", "eval.zero_shot=", "eval.fidelity=false", "losses.fd.weight=1.0"]


def moved_towers(tmp_path, overrides):
    torch.manual_seed(0)  # the run seeds itself with train.seed=0 before building the teacher: the same weights
    teacher = load_teacher("openclip", model="tiny-teacher").encoder.state_dict()
    run(config_lib.load(None, COMMON + overrides + ["train.save_every=1"]), tmp_path)
    first, state = (checkpoint.load(p) for p in checkpoint.list_checkpoints(tmp_path / "checkpoints"))
    reused = state["student_build"]["reused_tower"]
    for key, value in state["student"].items():
        if tower_of(key) == reused:
            assert torch.equal(value, teacher[key]), key  # the teacher's, untouched by two steps
    other = "image" if reused == "text" else "text"
    changed = [k for k, v in state["student"].items() if tower_of(k) == other and not torch.equal(v, first["student"][k])]
    assert len(changed) > 5  # the trained tower did train between step 1 and step 2
    return reused, state


def test_lit_style_text_tower_from_the_teacher_with_captions(tmp_path):
    reused, state = moved_towers(tmp_path, ["student.text_tower=teacher", "losses.clip.weight=1.0"])
    assert reused == "text" and state["student"]["visual.proj"].shape == (64, 96)
    text = sum(v.numel() for k, v in state["student"].items() if tower_of(k) == "text" and k != "logit_scale")
    banner = next(line for line in (tmp_path / "train.log").read_text().splitlines() if line.startswith("  student  "))
    assert f", {text:,} frozen)" in banner  # the banner tells the frozen teacher tower from what trains
    assert state["objective"] == {}  # dims agree: fd learns no projection head


def test_image_tower_from_the_teacher_trains_the_text_tower(tmp_path):
    reused, state = moved_towers(tmp_path, ["student.image_tower=teacher"])
    assert reused == "image" and state["student"]["text_projection"].shape == (64, 96)
    assert state["student_build"]["preprocess"]["mean"] == list(load_teacher("openclip", model="tiny-teacher").image_spec.mean)
