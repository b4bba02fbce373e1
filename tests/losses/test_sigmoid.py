"""Sigmoid semantics: siglip (= open_clip's SigLipLoss), sigmoid_kd (oracle: a double loop), the
student's learnable logit bias, and teacher_scale on the softmax KD terms."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdistill import Embeddings, UserError, losses
from clipdistill.losses.objective import build_objective
from clipdistill.models.student import build_student
from clipdistill.train.step import Distiller


def student_emb(n=6, d=8, scale=10.0, bias=-4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(torch.randn(n, d, generator=g).requires_grad_(), torch.randn(n, d, generator=g),
                      torch.tensor(scale), logit_bias=None if bias is None else torch.tensor(bias))


def teacher_emb(n=6, d=12, scale=50.0, bias=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(F.normalize(torch.randn(n, d, generator=g), dim=-1),
                      F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.tensor(scale), normalized=True,
                      logit_bias=None if bias is None else torch.tensor(bias))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# --- siglip

@pytest.mark.parametrize("scale, bias", [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_matches_open_clip(scale, bias):
    s = student_emb(n=9, scale=scale, bias=bias)
    ours = losses.get("siglip")(s, None)
    ref = open_clip.loss.SigLipLoss()(F.normalize(s.image, dim=-1), F.normalize(s.text, dim=-1),
                                      s.logit_scale, s.logit_bias)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_siglip_hand_checked_two_orthogonal_pairs():
    e = torch.eye(2)
    s = Embeddings(e.clone(), e.clone(), torch.tensor(3.0), logit_bias=torch.tensor(-1.0))
    # each row: the positive at logit 3 − 1 = 2, the negative at logit −1 (label −1: log σ(1))
    expected = -(log_sigmoid(2.0) + log_sigmoid(1.0))
    assert losses.get("siglip")(s).item() == pytest.approx(expected, rel=1e-6)


def test_siglip_local_rows_average_to_the_whole_batch():
    s = student_emb(n=6)
    whole = losses.get("siglip")(s)
    halves = [losses.get("siglip")(s.with_(local_rows=rows)) for rows in (slice(0, 3), slice(3, 6))]
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_siglip_without_a_student_bias_is_one_line():
    with pytest.raises(UserError, match="siglip needs a student with a logit bias"):
        losses.get("siglip")(student_emb(bias=None))


# --- the student's learnable logit bias

def test_siglip_gives_an_open_clip_student_a_learnable_bias():
    student = build_student("tiny").model
    assert student.logit_bias is None
    distiller = Distiller(student, build_objective({"siglip": {}}, student_dim=64, teacher_dim=None))
    assert isinstance(student.logit_bias, torch.nn.Parameter) and student.logit_bias.item() == -10.0
    assert "logit_bias" in student.state_dict()  # checkpoints (and exports of the state_dict) keep it
    assert "student.logit_bias" in dict(distiller.named_parameters())  # so the optimizer gets it
    emb = distiller.embed(torch.randn(2, 3, 32, 32), torch.randint(1, 100, (2, 32)))
    assert emb.logit_bias is student.logit_bias
    total, _ = distiller.objective(emb, None)
    total.backward()
    assert student.logit_bias.grad.abs() > 0


def test_an_existing_bias_is_kept_and_softmax_runs_get_none():
    student = build_student("tiny").model
    Distiller(student, build_objective({"clip": {}}, student_dim=64, teacher_dim=None))
    assert student.logit_bias is None
    student.logit_bias = torch.nn.Parameter(torch.tensor(-3.0))
    Distiller(student, build_objective({"siglip": {"init_bias": -10.0}}, student_dim=64, teacher_dim=None))
    assert student.logit_bias.item() == -3.0


# --- sigmoid_kd

def sigmoid_kd_reference(s, t, t_scale, t_bias, rows=range(6)):
    sv, st = F.normalize(s.image.detach(), dim=-1).tolist(), F.normalize(s.text, dim=-1).tolist()
    tv, tt = t.image.tolist(), t.text.tolist()
    s_scale, s_bias = float(s.logit_scale), float(s.logit_bias) if s.logit_bias is not None else 0.0
    total = 0.0
    for i in rows:
        for j in range(len(tt)):
            p = 1 / (1 + math.exp(-(t_scale * sum(a * b for a, b in zip(tv[i], tt[j])) + t_bias)))
            z = s_scale * sum(a * b for a, b in zip(sv[i], st[j])) + s_bias
            total += -(p * log_sigmoid(z) + (1 - p) * log_sigmoid(-z))
    return total / len(rows)


def test_sigmoid_kd_with_a_sigmoid_teacher_uses_its_scale_and_bias():
    s, t = student_emb(), teacher_emb(scale=12.0, bias=-6.0)
    assert losses.get("sigmoid_kd")(s, t).item() == pytest.approx(sigmoid_kd_reference(s, t, 12.0, -6.0), rel=1e-5)
    overridden = losses.get("sigmoid_kd", teacher_scale=4.0, teacher_bias=-1.0)(s, t)
    assert overridden.item() == pytest.approx(sigmoid_kd_reference(s, t, 4.0, -1.0), rel=1e-5)


def test_sigmoid_kd_with_a_softmax_teacher_needs_teacher_scale_and_bias_zero():
    s, t = student_emb(bias=None), teacher_emb(scale=100.0)
    with pytest.raises(UserError, match="set losses.sigmoid_kd.teacher_scale"):
        losses.get("sigmoid_kd")(s, t)
    value = losses.get("sigmoid_kd", teacher_scale=8.0)(s, t)
    assert value.item() == pytest.approx(sigmoid_kd_reference(s, t, 8.0, 0.0), rel=1e-5)


def test_sigmoid_kd_local_rows_and_gradient_minimum_at_the_teacher():
    s, t = student_emb(), teacher_emb(scale=12.0, bias=-6.0)
    part = losses.get("sigmoid_kd")(s.with_(local_rows=slice(2, 5)), t)
    assert part.item() == pytest.approx(sigmoid_kd_reference(s, t, 12.0, -6.0, rows=range(2, 5)), rel=1e-5)
    # A student equal to the teacher (same embeddings, scale, bias) gets zero gradient: BCE's minimum.
    same = Embeddings(t.image.clone().requires_grad_(), t.text.clone(), t.logit_scale, logit_bias=t.logit_bias)
    losses.get("sigmoid_kd")(same, t).backward()
    assert same.image.grad.abs().max() < 1e-6


def test_sigmoid_kd_also_gives_the_student_a_bias():
    assert build_objective({"sigmoid_kd": {}}, student_dim=8, teacher_dim=12).student_logit_bias == -10.0


# --- teacher_scale on every softmax KD term

def with_teacher_scale(t, scale):
    return t.with_(logit_scale=torch.tensor(scale))


@pytest.mark.parametrize("name", ["crd", "soft_clip", "cross_kd"])
def test_teacher_scale_replaces_the_teachers_temperature(name):
    s, t = student_emb(d=12), teacher_emb(scale=50.0)
    torch.manual_seed(0)
    default = losses.get(name)(s, t)
    torch.manual_seed(0)
    overridden = losses.get(name, teacher_scale=7.0)(s, t)
    torch.manual_seed(0)
    as_formula = losses.get(name)(s, with_teacher_scale(t, 7.0))  # the formula with τ_t = 7
    assert overridden.item() == pytest.approx(as_formula.item(), rel=1e-6)
    assert abs(overridden.item() - default.item()) > 1e-3


def test_crd_teacher_scale_against_the_naive_reference():
    s, t = student_emb(d=8, bias=None), teacher_emb(d=12, scale=50.0)
    sv, st = F.normalize(s.image.detach(), dim=-1), F.normalize(s.text, dim=-1)
    expected = 0.0
    for (a_t, b_t), (a_s, b_s) in (((t.image, t.text), (sv, st)), ((t.text, t.image), (st, sv))):
        p_t, p_s = (5.0 * a_t @ b_t.t()).softmax(1), (10.0 * a_s @ b_s.t()).softmax(1)  # τ_t = 5, τ_s = 10
        expected += (p_t * (p_t.log() - p_s.log())).sum(1).mean().item() / 2
    assert losses.get("crd", teacher_scale=5.0)(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_affinity_teacher_scale_sets_the_teacher_side_only():
    s, t = student_emb(d=12), teacher_emb(scale=50.0)
    sv, st = F.normalize(s.image.detach(), dim=-1), F.normalize(s.text, dim=-1)
    expected = 0.0
    for (a_t, b_t), (a_s, b_s) in (((t.image, t.text), (sv, st)), ((t.text, t.image), (st, sv))):
        p = (6.0 * a_t @ b_t.t()).softmax(1)
        expected += -(p * (20.0 * a_s @ b_s.t()).log_softmax(1)).sum(1).mean().item() / 2
    assert losses.get("affinity", scale=20.0, teacher_scale=6.0)(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert losses.get("affinity", scale=20.0)(s, t).item() == pytest.approx(
        losses.get("affinity", scale=20.0, teacher_scale=20.0)(s, t).item(), rel=1e-7)


def test_the_student_bias_is_optimized_without_weight_decay():
    from clipdistill.train.optim import build_optimizer

    student = build_student("tiny").model
    distiller = Distiller(student, build_objective({"siglip": {}}, student_dim=64, teacher_dim=None))
    decayed, plain = build_optimizer(distiller, lr=0.1, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6).param_groups
    assert any(p is student.logit_bias for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert not any(p is student.logit_bias for p in decayed["params"])
