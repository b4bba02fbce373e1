"""The rest of CLIP-KD's suite: soft_clip, affinity, cross_kd, afd, gd, mfd."""
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdistill import Embeddings, losses
from clipdistill.errors import UserError
from clipdistill.losses.gd import infonce_gradients


def student_emb(n=6, d=8, scale=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(torch.randn(n, d, generator=g).requires_grad_(), torch.randn(n, d, generator=g),
                      torch.tensor(scale))


def teacher_emb(n=6, d=8, scale=50.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(F.normalize(torch.randn(n, d, generator=g), dim=-1),
                      F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.tensor(scale), normalized=True)


def as_student(t: Embeddings) -> Embeddings:
    return Embeddings(t.image.clone().requires_grad_(), t.text.clone(), t.logit_scale.clone())


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_soft_clip_equals_open_clip_distill_term():
    s, t = student_emb(), teacher_emb(d=12)
    ref = open_clip.DistillClipLoss()(F.normalize(s.image, dim=-1), F.normalize(s.text, dim=-1), s.logit_scale,
                                      t.image, t.text, t.logit_scale, output_dict=True)["distill_loss"]
    assert losses.get("soft_clip")(s, t).item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_clip_minus_crd_is_teacher_entropy():
    s, t = student_emb(d=8), teacher_emb(d=8)
    p = (t.logit_scale * t.image @ t.text.t()).softmax(1)
    q = (t.logit_scale * t.text @ t.image.t()).softmax(1)
    entropy = 0.5 * (-(p * p.log()).sum(1).mean() - (q * q.log()).sum(1).mean())
    diff = losses.get("soft_clip")(s, t) - losses.get("crd")(s, t)
    assert diff.item() == pytest.approx(entropy.item(), rel=1e-5)


def test_affinity_uses_shared_scale_not_model_scales():
    s, t = student_emb(), teacher_emb(d=12)
    a = losses.get("affinity", scale=20.0)(s, t)
    s2 = s.with_(logit_scale=torch.tensor(99.0))
    t2 = t.with_(logit_scale=torch.tensor(1.0))
    assert losses.get("affinity", scale=20.0)(s2, t2).item() == pytest.approx(a.item(), rel=1e-6)
    sv, st = F.normalize(s.image, dim=-1).detach().numpy(), F.normalize(s.text, dim=-1).detach().numpy()
    tv, tt = t.image.numpy(), t.text.numpy()
    ref = 0
    for a_s, b_s, a_t, b_t in ((sv, st, tv, tt), (st, sv, tt, tv)):
        p = np_softmax(20 * a_t @ b_t.T)
        ref += -np.mean(np.sum(p * np.log(np_softmax(20 * a_s @ b_s.T)), axis=1))
    assert a.item() == pytest.approx(0.5 * ref, rel=1e-5)


def test_cross_kd_zero_at_teacher_and_matches_reference():
    t = teacher_emb()
    perfect = losses.get("cross_kd", init_scale=float(t.logit_scale))
    assert perfect(as_student(t), t).abs().item() < 1e-5
    s = student_emb()
    value = losses.get("cross_kd", temperature=2.0)(s, t)
    sv, st = F.normalize(s.image, dim=-1).detach().numpy(), F.normalize(s.text, dim=-1).detach().numpy()
    tv, tt, k, tau = t.image.numpy(), t.text.numpy(), 1 / 0.07, float(t.logit_scale)
    ref = 0
    for a_s, a_t, b_t in ((sv, tv, tt), (st, tt, tv)):
        p = np_softmax(tau * a_t @ b_t.T / 2)
        q = np_softmax(k * a_s @ b_t.T / 2)
        ref += np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    assert value.item() == pytest.approx(0.5 * ref * 4, rel=1e-5)


def test_afd_works_when_dims_differ_and_trains_fusion():
    s, t = student_emb(d=8), teacher_emb(d=12)
    afd = losses.get("afd", student_dim=8, teacher_dim=12)
    assert afd.fuse_image.weight.shape == (12, 24)
    value = afd(s, t)
    value.backward()
    assert torch.isfinite(value)
    assert s.image.grad.abs().sum() > 0 and afd.fuse_text.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="teacher_dim"):
        losses.get("afd")


def test_gd_closed_form_equals_autograd():
    g = torch.Generator().manual_seed(3)
    p = F.normalize(torch.randn(7, 5, generator=g), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(7, 5, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(12.0)
    loss_sum = F.cross_entropy(scale * p @ k.t(), torch.arange(7), reduction="sum")
    auto_p, auto_k = torch.autograd.grad(loss_sum, (p, k))
    closed_p, closed_k = infonce_gradients(p.detach(), k.detach(), scale)
    assert torch.allclose(closed_p, auto_p, atol=1e-5) and torch.allclose(closed_k, auto_k, atol=1e-5)


def test_gd_raw_zero_at_teacher_positive_elsewhere_and_multiplies_by_temperature():
    t = teacher_emb()
    assert losses.get("gd_raw")(as_student(t), t).item() < 1e-8
    s = student_emb()
    gd = losses.get("gd_raw")
    assert gd(s, t).item() > 0
    # CLIP's convention: gradients scale with τ (the reference divided by it).
    p, k = t.image, t.text
    g1, _ = infonce_gradients(p, k, torch.tensor(1e-4))
    assert g1.abs().max() < 1e-3


def test_mfd_declares_patch_dropout_and_checks_ratio():
    default = losses.get("mfd")  # feature_only: the task loss sees the full image
    assert default.student_patch_dropout == 0.0 and default.student_masked_view == 0.75
    assert losses.get("mfd", mask_ratio=0.5, masked="all").student_patch_dropout == 0.5
    with pytest.raises(UserError, match="mask_ratio"):  # one line at the CLI, not a traceback
        losses.get("mfd", mask_ratio=1.0)
    with pytest.raises(UserError, match="masked must be one of all, feature_only"):
        losses.get("mfd", masked="task")
    feature_only = losses.get("mfd", mask_ratio=0.5, masked="feature_only")
    assert feature_only.student_patch_dropout == 0.0 and feature_only.student_masked_view == 0.5


# Every loss's gradient check (student yes, teacher never) enumerates losses.names(): tests/losses/test_every_loss.py
