import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdistill import Embeddings, UserError
from clipdistill import losses
from clipdistill.losses.objective import build_objective


def student_emb(n=6, d=8, scale=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(torch.randn(n, d, generator=g).requires_grad_(),
                      torch.randn(n, d, generator=g), torch.tensor(scale))


def teacher_emb(n=6, d=8, scale=50.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(F.normalize(torch.randn(n, d, generator=g), dim=-1),
                      F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.tensor(scale), normalized=True)


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce_diag(logits):
    p = np_softmax(logits)
    return float(-np.mean(np.log(np.diag(p))))


def np_norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_matches_open_clip_cliploss():
    s = student_emb()
    ours = losses.get("clip")(s, None)
    ref = open_clip.ClipLoss()(F.normalize(s.image, dim=-1), F.normalize(s.text, dim=-1), s.logit_scale)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_clip_hand_checked_two_pairs():
    # Orthogonal perfect pairs: logits = scale*I, CE = log(1 + e^-scale) for each row.
    e = torch.eye(2)
    s = Embeddings(e.clone(), e.clone(), torch.tensor(3.0))
    assert losses.get("clip")(s).item() == pytest.approx(math.log(1 + math.exp(-3.0)), rel=1e-6)


def crd_reference(s, t, T):
    sv, st = np_norm(s.image.detach().numpy()), np_norm(s.text.detach().numpy())
    tv, tt = t.image.numpy(), t.text.numpy()
    total = 0.0
    for a_s, b_s, a_t, b_t in ((sv, st, tv, tt), (st, sv, tt, tv)):
        p_t = np_softmax(float(t.logit_scale) * a_t @ b_t.T / T)
        p_s = np_softmax(float(s.logit_scale) * a_s @ b_s.T / T)
        total += np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    return 0.5 * total * T * T


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_crd_matches_naive_reference(T):
    s, t = student_emb(d=8), teacher_emb(d=12)  # CRD compares similarities only: dims may differ
    value = losses.get("crd", temperature=T)(s, t)
    assert value.item() == pytest.approx(crd_reference(s, t, T), rel=1e-5)


def test_crd_zero_when_student_equals_teacher():
    t = teacher_emb()
    s = Embeddings(t.image.clone().requires_grad_(), t.text.clone(), t.logit_scale.clone())
    assert losses.get("crd")(s, t).abs().item() < 1e-6


def test_fd_value_and_zero_at_teacher():
    t = teacher_emb(d=4)
    s = Embeddings((3 * t.image).requires_grad_(), 2 * t.text, torch.tensor(1.0))
    assert losses.get("fd")(s, t).item() == pytest.approx(0.0, abs=1e-6)  # normalization removes the scale
    other = teacher_emb(d=4, seed=7)
    s2 = Embeddings(other.image.clone().requires_grad_(), other.text.clone(), torch.tensor(1.0))
    expected = ((other.image - t.image) ** 2).sum(1) + ((other.text - t.text) ** 2).sum(1)
    assert losses.get("fd")(s2, t).item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_fd_heads_when_dims_differ_and_gradients_flow():
    s, t = student_emb(d=8), teacher_emb(d=12)
    fd = losses.get("fd", student_dim=8, teacher_dim=12)
    assert fd.project.image.weight.shape == (12, 8)
    fd(s, t).backward()
    assert s.image.grad is not None and s.image.grad.abs().sum() > 0
    assert fd.project.image.weight.grad.abs().sum() > 0


def test_fd_no_head_when_dims_agree_unless_always():
    assert losses.get("fd", student_dim=8, teacher_dim=8).project.image is None
    assert losses.get("fd", student_dim=8, teacher_dim=8, always_project=True).project.image is not None


def test_fd_without_dims_refuses_mismatch():
    with pytest.raises(ValueError, match="student_dim"):
        losses.get("fd")(student_emb(d=8), teacher_emb(d=12))


def test_icl_matches_naive_reference():
    s, t = student_emb(d=8), teacher_emb(d=8)
    icl = losses.get("icl")
    assert icl.cross_scale().item() == pytest.approx(1 / 0.07)
    sv, st = np_norm(s.image.detach().numpy()), np_norm(s.text.detach().numpy())
    k = 1 / 0.07
    expected = 0.5 * (np_ce_diag(k * sv @ t.text.numpy().T) + np_ce_diag(k * st @ t.image.numpy().T))
    assert icl(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_icl_scale_clamped_and_learnable():
    s, t = student_emb(d=8), teacher_emb(d=8)
    icl = losses.get("icl", init_scale=500.0)
    capped = losses.get("icl", init_scale=100.0)
    assert icl(s, t).item() == pytest.approx(capped(s, t).item(), rel=1e-6)
    small = losses.get("icl")
    small(s, t).backward()
    assert small.cross_scale.param.grad is not None


def test_get_rejects_unknown_name_and_parameter():
    with pytest.raises(UserError, match="unknown loss 'fdd'"):
        losses.get("fdd")
    with pytest.raises(UserError, match="no parameter 'temprature'"):
        losses.get("crd", temprature=2.0)


def test_objective_weights_terms_and_never_grads_teacher():
    s = student_emb(d=8)
    t = teacher_emb(d=12)
    t = t.with_(image=t.image.clone().requires_grad_())
    objective = build_objective({"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {"temperature": 2.0},
                                 "icl": {"weight": 0.5}}, student_dim=8, teacher_dim=12)
    total, terms = objective(s, t)
    assert set(terms) == {"clip", "fd", "crd", "icl"}
    expected = terms["clip"] + 3.9 * terms["fd"] + terms["crd"] + 0.5 * terms["icl"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert t.image.grad is None
    assert s.image.grad.abs().sum() > 0
    assert objective.needs_teacher


def test_baseline_objective_needs_no_teacher():
    objective = build_objective({"clip": {}}, student_dim=8, teacher_dim=None)
    assert not objective.needs_teacher
    total, terms = objective(student_emb(), None)
    assert torch.isfinite(total)


def test_unit_embeddings_are_normalized_once_per_object_and_grad_mode():
    """clip and crd share one normalization of the student's embeddings; a no-grad use first (a per-teacher record)
    must not hand a later term a tensor without gradient; a copy (with_) normalizes its own tensors."""
    image = torch.randn(4, 3, requires_grad=True)
    student = Embeddings(image=image, text=torch.randn(4, 3), logit_scale=torch.tensor(10.0))
    with torch.no_grad():
        first = student.unit("image")
    assert not first.requires_grad
    live = student.unit("image")
    assert live.requires_grad and live is student.unit("image")
    assert torch.allclose(live, torch.nn.functional.normalize(image, dim=-1))
    other = student.with_(image=2 * image)
    assert other.unit("image") is not live and torch.allclose(other.unit("image"), live)
    teacher = Embeddings(image=torch.ones(4, 3), text=torch.ones(4, 3), logit_scale=torch.tensor(1.0), normalized=True)
    assert teacher.unit("text") is teacher.text  # normalized already: as it is
