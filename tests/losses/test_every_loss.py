"""Checks every registered loss gets without being listed: losses.names() is the list.

(The 2-rank and accumulation checks enumerate the same cases: tests/toys.py CASES.)
"""
import math

import pytest
import torch

from clipdistill import losses
from clipdistill.losses.objective import build_objective
from clipdistill.losses.scales import LearnableScale
from clipdistill.train.optim import build_optimizer
from clipdistill.train.step import train_step
from toys import CASES, D_S, D_T, make_inputs, make_model

NAMES = losses.names()
IMAGE_ONLY = {"crd_image"}


def test_every_registered_name_is_a_case():
    assert set(NAMES) <= set(CASES)
    assert {"clip", "crd", "fd", "gd", "gd_raw", "siglip", "sigmoid_kd", "cid_cluster"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_declares_whether_it_needs_a_teacher(name):
    cls = losses.resolve(name)
    assert isinstance(cls.needs_teacher, bool)
    assert losses.needs_teacher([name]) is cls.needs_teacher
    assert losses.needs_teacher({name: {}}) is cls.needs_teacher  # a config's losses: mapping works too


def test_needs_teacher_rule():
    assert not losses.needs_teacher(["clip"]) and not losses.needs_teacher(["siglip", "clip"])
    assert losses.needs_teacher(["clip", "fd"]) and losses.needs_teacher({"siglip": {}, "sigmoid_kd": {}})
    assert not build_objective({"clip": {}, "siglip": {}}, student_dim=D_S, teacher_dim=None).needs_teacher


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_student_never_the_teacher(name):
    model = make_model(CASES[name])
    images, tokens, teacher = make_inputs()
    teacher = teacher.with_(image=teacher.image.clone().requires_grad_(), text=teacher.text.clone().requires_grad_())
    needs = losses.resolve(name).needs_teacher
    total, terms = model(images, tokens, teacher if needs else None)  # student-only losses run without one
    assert set(terms) == {name} and torch.isfinite(total) and total.dtype == torch.float32
    total.backward()
    image_only = name in IMAGE_ONLY  # relations among images: the text tower gets no gradient at all
    for tower in (model.student.visual,) if image_only else (model.student.visual, model.student.textual):
        assert tower.weight.grad is not None and tower.weight.grad.abs().sum() > 0, name
    if image_only:
        assert model.student.textual.weight.grad is None, name
    assert teacher.image.grad is None and teacher.text.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    """Learnable parts (heads, scales, centroids, the student's bias) survive save and load exactly."""
    trained = make_model(CASES[name])
    optimizer = build_optimizer(trained, lr=0.05, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    images, tokens, teacher = make_inputs()
    for step in range(2):
        train_step(trained, {"student_image": images, "student_text": tokens}, teacher, optimizer=optimizer,
                   lr=0.05, device=torch.device("cpu"), precision="fp32", grad_clip=0.0, step=step)
    fresh = make_model(CASES[name], seed=1)  # another initialization
    fresh.load_state_dict(trained.state_dict())
    for (key, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    with torch.no_grad():
        assert torch.equal(trained(images, tokens, teacher)[0], fresh(images, tokens, teacher)[0])


@pytest.mark.parametrize("name", NAMES)
def test_fp32_under_forced_bf16_autocast(name):
    """The objective's math runs in fp32 even when the models ran under bf16 autocast."""
    model = make_model(CASES[name])
    images, tokens, teacher = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = model.embed(images, tokens)
        bf16_teacher = teacher.with_(image=teacher.image.bfloat16(), text=teacher.text.bfloat16())
        assert student.image.dtype == torch.bfloat16  # the autocast really is on
        total, terms = model.objective(student, bf16_teacher)
    as_fp32 = student.with_(image=student.image.float(), text=student.text.float())
    fp32_teacher = teacher.with_(image=bf16_teacher.image.float(), text=bf16_teacher.text.float())
    expected, _ = model.objective(as_fp32, fp32_teacher)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)


def _scaled_terms():
    return [name for name in NAMES if hasattr(losses.get(name, **CASES[name][name], student_dim=D_S,
                                                           teacher_dim=D_T), "clamp_")]


REFERENCE_SCALED = ("icl", "cross_kd", "afd", "cid_instance")  # init_scale and scale_param (exp | raw)


def test_the_reference_learnable_scales_are_clamped():
    assert set(REFERENCE_SCALED) <= set(_scaled_terms())


@pytest.mark.parametrize("scale_param", ["exp", "raw"])
@pytest.mark.parametrize("name", _scaled_terms())
def test_scale_above_the_cap_has_gradient_and_is_clamped_after_the_step(name, scale_param):
    specs = {name: {**CASES[name][name], "scale_param": scale_param}} if name in REFERENCE_SCALED else CASES[name]
    model = make_model(specs)
    scales = [m for m in model.objective.terms[name].modules() if isinstance(m, LearnableScale)]
    assert scales, name  # a term with clamp_() holds its scale as a LearnableScale
    for scale in scales:
        above = math.log(scale.max_scale) + 0.5 if scale.kind == "exp" else scale.max_scale + 5.0
        with torch.no_grad():
            scale.param.fill_(above)  # as if an update had pushed it over
    images, tokens, teacher = make_inputs()
    model(images, tokens, teacher)[0].backward()
    for scale in scales:  # a forward clamp would give 0
        assert scale.param.grad is not None and scale.param.grad.abs() > 0
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    train_step(model, {"student_image": images, "student_text": tokens}, teacher, optimizer=optimizer,
               lr=0.05, device=torch.device("cpu"), precision="fp32", grad_clip=0.0, step=0)
    for scale in scales:
        assert scale().item() == pytest.approx(scale.max_scale, rel=1e-6)


def test_a_raw_scale_pushed_below_zero_is_clamped_to_zero():
    model = make_model({"icl": {"scale_param": "raw", "init_scale": 2.659}})
    scale = model.objective.terms["icl"].cross_scale
    with torch.no_grad():
        scale.param.fill_(-1.0)  # a negative scale would turn every similarity around
    model.objective.clamp_scales_()
    assert scale().item() == 0.0
