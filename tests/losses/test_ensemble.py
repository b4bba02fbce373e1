"""Teacher ensembles in the objective (issue 19).

Distribution terms distill to MobileCLIP's ensemble target (each teacher's softmax at its own scale, then
the weighted average; checked against a naive reference written from MobileCLIP's ``dot_ensemble_features``
/ ``DistillClipLoss.dist_loss`` with ``average_after_softmax``), the other terms are one copy per teacher,
summed with the weights; one teacher is exactly today's objective; with two teachers every term keeps
its guarantees (2 ranks = 1 rank, exact accumulation, state_dict).
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipdistill.ensemble import TeacherEnsemble
from clipdistill.losses.functional import MixedSoftmax, kl_rows
from clipdistill.losses.objective import PerTeacher
from clipdistill.train.optim import build_optimizer
from clipdistill.train.step import accumulate_gradients, train_step
from toys import (CASES, D_T, D_T2, ENSEMBLE_CASES, ENSEMBLE_WEIGHTS, N, make_ensemble_inputs, make_ensemble_model,
                  make_inputs, make_model)

WEIGHTS = [w / sum(ENSEMBLE_WEIGHTS) for w in ENSEMBLE_WEIGHTS]


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------ one teacher is today's objective

# Every CASES term on the toy inputs, computed at commit 83db2f7 (before ensembles existed; crd_image,
# added alongside, at 12136f7; reference_scales and every_head at methods bda9209, where every other value agreed).
BEFORE_ENSEMBLES = json.loads((Path(__file__).parent / "before_ensembles.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_one_teacher_gives_the_values_of_before_ensembles(case):
    images, tokens, teacher = make_inputs()
    total, terms = make_model(CASES[case])(images, tokens, teacher)
    expected = BEFORE_ENSEMBLES[case]
    assert set(terms) == set(expected["terms"])  # no per-teacher entries for one teacher
    assert total.item() == pytest.approx(expected["total"], rel=1e-6)
    for name, value in terms.items():
        assert value.item() == pytest.approx(expected["terms"][name], rel=1e-6), name


@pytest.mark.parametrize("case", list(CASES))
def test_an_ensemble_of_one_is_exactly_the_plain_teacher(case):
    images, tokens, teacher = make_inputs()
    plain = make_model(CASES[case])
    total, terms = plain(images, tokens, teacher)
    total.backward()
    alone = make_model(CASES[case])
    one_total, one_terms = alone(images, tokens, TeacherEnsemble.weighted([teacher], [3.0]))  # its weight is 1 then
    one_total.backward()
    assert torch.equal(one_total, total) and one_terms.keys() == terms.keys()
    assert all(torch.equal(one_terms[k], terms[k]) for k in terms)
    expected, got = grads(plain), grads(alone)
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_one_teacher_keeps_the_state_dict_keys_of_checkpoints():
    keys = set(make_model(CASES["clipkd"]).state_dict())
    assert "objective.terms.fd.project.image.weight" in keys and not any("copies" in k for k in keys)


# ------------------------------------------------------------------ distribution terms: MobileCLIP's rule

def _mobileclip_target(members, weights, image_rows: bool, scales, temperature=1.0):
    """Σ_t w_t softmax(τ_t a_t b_tᵀ / T), as MobileCLIP's dot_ensemble_features (there: equal weights, one scale)."""
    target = 0
    for member, weight, scale in zip(members, weights, scales):
        a, b = (member.image, member.text) if image_rows else (member.text, member.image)
        target = target + weight * torch.softmax(float(scale) * a.double() @ b.double().T / temperature, dim=1)
    return target


def _student_logits(student, image_rows: bool, scale, temperature=1.0):
    image, text = F.normalize(student.image.double(), dim=-1), F.normalize(student.text.double(), dim=-1)
    a, b = (image, text) if image_rows else (text, image)
    return float(scale) * a @ b.T / temperature


def _soft_ce(target, logits):  # MobileCLIP's dist_loss with average_after_softmax: −Σ p̄ log q, mean over rows
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def _kl(target, logits):
    return (target * (target.log() - logits.log_softmax(dim=1))).sum(dim=1).mean()


def _reference(name, model, images, tokens, ensemble):
    """The term's value on the ensemble, from the formulas alone (float64)."""
    with torch.no_grad():
        student = model.embed(images, tokens)
    members, scales = ensemble.members, [m.logit_scale for m in ensemble.members]
    both = (True, False)
    if name in ("crd", "crd_T2", "soft_clip"):
        t = 2.0 if name == "crd_T2" else 1.0
        row_loss = _soft_ce if name == "soft_clip" else _kl
        return sum(row_loss(_mobileclip_target(members, WEIGHTS, rows, scales, t),
                            _student_logits(student, rows, student.logit_scale, t)) for rows in both) / 2 * t * t
    if name == "affinity":  # one fixed scale on both sides, whatever the teachers' own
        return sum(_soft_ce(_mobileclip_target(members, WEIGHTS, rows, [100.0, 100.0]),
                            _student_logits(student, rows, 100.0)) for rows in both) / 2
    if name == "sigmoid_kd":  # averaged sigmoid targets, at the term's teacher_scale (10) and bias 0
        target = sum(w * torch.sigmoid(10.0 * m.image.double() @ m.text.double().T) for m, w in zip(members, WEIGHTS))
        logits = _student_logits(student, True, student.logit_scale) + student.logit_bias.double()
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / N
    if name == "cross_kd":  # Σ_k w_k KL(p̄ ‖ σ(κ_k P_k(s) t_kᵀ)): each teacher's head and candidates, the ensemble's target
        total = 0
        for k, (member, weight) in enumerate(zip(members, WEIGHTS)):
            copy = model.objective.terms["cross_kd"].copies[k]
            with torch.no_grad():
                image, text = (F.normalize(x, dim=-1).double() for x in copy.project(student, member))
            kappa = copy.cross_scale().double()
            value = (_kl(_mobileclip_target(members, WEIGHTS, True, scales), kappa * image @ member.text.double().T)
                     + _kl(_mobileclip_target(members, WEIGHTS, False, scales), kappa * text @ member.image.double().T))
            total = total + weight * value / 2
        return total
    raise KeyError(name)


DISTRIBUTION_CASES = ["crd", "crd_T2", "soft_clip", "affinity", "sigmoid_kd", "cross_kd"]


@pytest.mark.parametrize("case", DISTRIBUTION_CASES)
def test_distribution_terms_distill_to_mobileclips_ensemble_target(case):
    images, tokens, ensemble = make_ensemble_inputs()
    model = make_ensemble_model(CASES[case])
    name = next(iter(CASES[case]))
    with torch.no_grad():
        _, terms = model(images, tokens, ensemble)
    expected = _reference(case, model, images, tokens, ensemble)
    assert terms[name].item() == pytest.approx(expected.item(), rel=1e-5)
    # The two teachers disagree: the ensemble's target is neither teacher's alone.
    alone = [terms[f"{name}/t{k}"].item() for k in range(2)]
    assert all(abs(a - terms[name].item()) > 1e-3 for a in alone)


@pytest.mark.parametrize("case", ["crd", "soft_clip", "sigmoid_kd"])
def test_one_for_all_terms_report_each_teacher_alone(case):
    images, tokens, ensemble = make_ensemble_inputs()
    model = make_ensemble_model(CASES[case])
    name = next(iter(CASES[case]))
    _, terms = model(images, tokens, ensemble)
    for k, member in enumerate(ensemble.members):
        alone = make_model(CASES[case])  # no parameters of its own: the same term against one teacher
        with torch.no_grad():
            _, expected = alone.objective(model.embed(images, tokens), member)
        assert terms[f"{name}/t{k}"].item() == pytest.approx(expected[name].item(), rel=1e-6)


def test_each_teachers_temperature_is_its_softmax_scale():
    """A member's logit_scale (where EnsembleTargets puts teacher.temperature) sets its share of the target."""
    images, tokens, ensemble = make_ensemble_inputs()
    model = make_ensemble_model(CASES["crd"])
    hotter = TeacherEnsemble(tuple(m.with_(logit_scale=torch.tensor(s)) for m, s in zip(ensemble.members, (5.0, 80.0))),
                             ensemble.weights)
    with torch.no_grad():
        got = model(images, tokens, hotter)[1]["crd"]
    assert got.item() == pytest.approx(_reference("crd", model, images, tokens, hotter).item(), rel=1e-5)
    assert abs(got.item() - model(images, tokens, ensemble)[1]["crd"].item()) > 1e-2


def test_mixed_softmax_stays_finite_where_one_teacher_is_certain():
    """log p̄ by logsumexp: a teacher at τ = 1000 puts ~0 mass off its argmax, the other teacher does not."""
    confident, soft = torch.tensor([[1000.0, 0.0, -1000.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    mixed = MixedSoftmax([confident, soft], [0.5, 0.5])
    naive = (0.5 * confident.double().softmax(dim=1) + 0.5 * soft.double().softmax(dim=1))
    assert torch.allclose(mixed.softmax(dim=1).double(), naive, atol=1e-7)
    assert torch.allclose(mixed.log_softmax(dim=1).double(), naive.log(), atol=1e-6)
    assert torch.isfinite(kl_rows(mixed, soft))


# ------------------------------------------------------------------ the other terms: one copy per teacher

def test_feature_terms_have_a_head_per_teacher_and_sum_the_weighted_copies():
    images, tokens, ensemble = make_ensemble_inputs()
    model = make_ensemble_model(CASES["clipkd"])
    fd = model.objective.terms["fd"]
    assert isinstance(fd, PerTeacher) and [c.project.image.out_features for c in fd.copies] == [D_T, D_T2]
    assert "objective.terms.fd.copies.1.project.image.weight" in model.state_dict()
    assert not isinstance(model.objective.terms["crd"], PerTeacher)  # one term for all teachers
    assert not isinstance(model.objective.terms["clip"], PerTeacher)  # the student's own task loss
    total, terms = model(images, tokens, ensemble)
    with torch.no_grad():
        student = model.embed(images, tokens)
        expected = []
        for copy, member in zip(fd.copies, ensemble.members):  # FD from its formula, in that teacher's space
            image = F.normalize(copy.project.image(student.image), dim=-1)
            text = F.normalize(copy.project.text(student.text), dim=-1)
            expected.append(((image - member.image).pow(2).sum(1) + (text - member.text).pow(2).sum(1)).mean())
    for k in range(2):
        assert terms[f"fd/t{k}"].item() == pytest.approx(expected[k].item(), rel=1e-6)
    assert terms["fd"].item() == pytest.approx(sum(w * e for w, e in zip(WEIGHTS, expected)).item(), rel=1e-6)
    assert {"clip", "crd", "crd/t0", "crd/t1", "icl", "icl/t0", "icl/t1"} <= set(terms) and "clip/t0" not in terms
    weights = {"clip": 1.0, "fd": 3.9, "crd": 1.0, "icl": 1.0}
    assert total.item() == pytest.approx(sum(w * terms[n].item() for n, w in weights.items()), rel=1e-6)


def test_each_copy_learns_only_from_its_own_teacher():
    images, tokens, ensemble = make_ensemble_inputs()
    model = make_ensemble_model(CASES["fd"])
    only_first = TeacherEnsemble(ensemble.members, (1.0, 0.0))
    model(images, tokens, only_first)[0].backward()
    first, second = model.objective.terms["fd"].copies
    assert first.project.image.weight.grad.abs().sum() > 0
    assert second.project.image.weight.grad is None or second.project.image.weight.grad.abs().sum() == 0


# ------------------------------------------------------------------ guarantees with two teachers

@pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
def test_two_teachers_accumulating_two_halves_equals_one_batch(case):
    images, tokens, ensemble = make_ensemble_inputs()
    whole = make_ensemble_model(ENSEMBLE_CASES[case])
    accumulate_gradients(whole, images, tokens, ensemble, accum_steps=1, device=torch.device("cpu"),
                         precision="fp32", step=1)
    split = make_ensemble_model(ENSEMBLE_CASES[case])
    accumulate_gradients(split, images, tokens, ensemble, accum_steps=2, device=torch.device("cpu"),
                         precision="fp32", step=1)
    expected, got = grads(whole), grads(split)
    assert set(got) == set(expected) and expected
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5), (name, (got[name] - grad).abs().max())


@pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
def test_two_teachers_state_dict_round_trip(case):
    trained = make_ensemble_model(ENSEMBLE_CASES[case])
    optimizer = build_optimizer(trained, lr=0.05, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    images, tokens, ensemble = make_ensemble_inputs()
    for step in range(2):
        train_step(trained, {"student_image": images, "student_text": tokens}, ensemble, optimizer=optimizer,
                   lr=0.05, device=torch.device("cpu"), precision="fp32", grad_clip=0.0, step=step)
    fresh = make_ensemble_model(ENSEMBLE_CASES[case], seed=1)
    fresh.load_state_dict(trained.state_dict())
    for (key, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    with torch.no_grad():
        assert torch.equal(trained(images, tokens, ensemble)[0], fresh(images, tokens, ensemble)[0])


def test_learnable_scales_of_every_copy_are_clamped():
    model = make_ensemble_model(CASES["icl"])
    copies = model.objective.terms["icl"].copies
    with torch.no_grad():
        for copy in copies:
            copy.cross_scale.param.fill_(math.log(copy.cross_scale.max_scale) + 0.5)
    model.objective.clamp_scales_()
    assert all(copy.cross_scale().item() == pytest.approx(copy.cross_scale.max_scale, rel=1e-6) for copy in copies)


# Two teachers on two ranks: tests/train/test_distributed.py runs ENSEMBLE_CASES in its one spawn of two processes.


def test_shared_heads_with_two_teachers_share_one_head_per_teacher():
    # train.heads=shared with an ensemble: every term's copy for teacher k projects through teacher k's one head.
    model = make_ensemble_model({"fd": {}, "icl": {}, "cross_kd": {}}, heads="shared")
    terms = model.objective.terms
    for k, width in enumerate((D_T, D_T2)):
        heads = {id(terms[name].copies[k].project) for name in ("fd", "icl", "cross_kd")}
        scales = {id(terms[name].copies[k].cross_scale) for name in ("icl", "cross_kd")}
        assert len(heads) == 1 and len(scales) == 1
        assert terms["fd"].copies[k].project.image.out_features == width
    assert terms["fd"].copies[0].project is not terms["fd"].copies[1].project
    images, tokens, ensemble = make_ensemble_inputs()
    total, _ = model(images, tokens, ensemble)
    total.backward()
    assert all(terms["fd"].copies[k].project.image.weight.grad.abs().sum() > 0 for k in (0, 1))


def test_focus_traces_in_one_graph_for_train_compile_all():
    """train.compile=all: the objective hands each term ensemble.focus(k); dynamo could not trace
    dataclasses.fields() of the Embeddings class there and broke the objective's graph at every term."""
    from clipdistill.embeddings import Embeddings

    member = Embeddings(image=torch.ones(2, 3), text=torch.ones(2, 3), logit_scale=torch.tensor(5.0), normalized=True)
    ensemble = TeacherEnsemble.weighted([member], [1.0])
    focused = torch.compile(lambda e: e.focus(0).image * e.focus(0).logit_scale, fullgraph=True, backend="eager")
    assert torch.equal(focused(ensemble), 5 * torch.ones(2, 3))
