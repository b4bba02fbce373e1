"""CLIP-CID losses: naive references, margins, partial FC at K = 100 000, learnable centroids."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipdistill import Embeddings, UserError
from clipdistill import losses
from clipdistill.losses.partial_fc import arcface_logits, sample_classes


def student_emb(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(torch.randn(n, d, generator=g).requires_grad_(), torch.randn(n, d, generator=g).requires_grad_(),
                      torch.tensor(10.0))


def teacher_emb(n=6, d=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Embeddings(F.normalize(torch.randn(n, d, generator=g), dim=-1),
                      F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.tensor(50.0), normalized=True)


def centroids(k=5, d=8, seed=2):
    return F.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def np_unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_cluster_loss(s, t, c, scale, margin, classes=None):
    """Per sample, per tower: softmax over classes with the margin on the true class's angle."""
    c = np_unit(c.numpy())
    labels = np.argmax(t.image.numpy() @ c.T, axis=1)
    classes = np.arange(len(c)) if classes is None else classes
    total = 0.0
    for tower in (s.image, s.text):
        x = np_unit(tower.detach().numpy())
        for i, y in enumerate(labels):
            logits = [scale * math.cos(math.acos(x[i] @ c[k]) + (margin if k == y else 0.0)) for k in classes]
            logits = np.array(logits)
            true = list(classes).index(y)
            total += -(logits[true] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    return total / (2 * len(labels))


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_cluster_loss_matches_naive_arcface(margin):
    s, t, c = student_emb(), teacher_emb(), centroids()
    loss = losses.get("cid_cluster", centroids=c, scale=16.0, margin=margin)
    assert loss(s, t).item() == pytest.approx(naive_cluster_loss(s, t, c, 16.0, margin), rel=1e-4)


def test_margin_penalizes_the_true_class():
    s, t, c = student_emb(), teacher_emb(), centroids()
    plain = losses.get("cid_cluster", centroids=c, margin=0.0)(s, t)
    assert losses.get("cid_cluster", centroids=c, margin=0.3)(s, t) > plain


def test_arcface_hand_checked_and_fallback_past_pi():
    cosine = torch.tensor([[math.cos(0.5), 0.1], [-0.99, 0.2]])
    logits = arcface_logits(cosine, torch.tensor([0, 0]), scale=2.0, margin=0.4)
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(0.9), rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(0.2, rel=1e-5)
    # θ = acos(-0.99) ≈ 3.0 rad: θ + m > π, so the linear fallback cos θ − m·sin m applies
    assert logits[1, 0].item() == pytest.approx(2 * (-0.99 - 0.4 * math.sin(0.4)), rel=1e-5)


def test_labels_from_extras_override_nearest_centroid():
    s, t, c = student_emb(), teacher_emb(), centroids()
    loss = losses.get("cid_cluster", centroids=c)
    nearest = (t.image @ c.t()).argmax(1)
    same = loss(s, t.with_(extras={"cluster": nearest}))
    assert same.item() == pytest.approx(loss(s, t).item(), rel=1e-6)
    other = loss(s, t.with_(extras={"cluster": (nearest + 1) % 5}))
    assert other.item() != pytest.approx(same.item(), rel=1e-3)


def test_minimal_when_student_sits_on_its_centroid():
    c = centroids(k=4, d=8)
    t = Embeddings(c[[0, 1, 2, 3]], c[[0, 1, 2, 3]], torch.tensor(50.0), normalized=True)
    on = Embeddings(c[[0, 1, 2, 3]].clone().requires_grad_(), c[[0, 1, 2, 3]].clone(), torch.tensor(1.0))
    off = Embeddings(c[[1, 2, 3, 0]].clone().requires_grad_(), c[[1, 2, 3, 0]].clone(), torch.tensor(1.0))
    loss = losses.get("cid_cluster", centroids=c, scale=32.0, margin=0.2)
    assert loss(on, t) < 0.01 < loss(off, t)


def test_fixed_centroids_are_a_buffer_learnable_ones_get_gradient_teacher_none():
    s, t, c = student_emb(d=6), teacher_emb(d=8), centroids()
    t = t.with_(image=t.image.clone().requires_grad_())
    fixed = losses.get("cid_cluster", centroids=c, student_dim=6, teacher_dim=8)
    assert not any(p.shape == c.shape for p in fixed.parameters())
    learnable = losses.get("cid_cluster", centroids=c, student_dim=6, teacher_dim=8, learnable=True)
    learnable(s, t).backward()
    assert learnable.centroids.grad.abs().sum() > 0
    assert learnable.project.image.weight.grad.abs().sum() > 0
    assert s.image.grad.abs().sum() > 0 and s.text.grad.abs().sum() > 0
    assert t.image.grad is None


def test_centroids_from_npy_and_bad_input(tmp_path):
    c = centroids()
    np.save(tmp_path / "c.npy", c.numpy())
    s, t = student_emb(), teacher_emb()
    from_file = losses.get("cid_cluster", centroids=str(tmp_path / "c.npy"))
    assert from_file(s, t).item() == pytest.approx(losses.get("cid_cluster", centroids=c)(s, t).item(), rel=1e-6)
    with pytest.raises(UserError, match="not found"):
        losses.get("cid_cluster", centroids=str(tmp_path / "missing.npy"))
    with pytest.raises(UserError, match="dim 8, the teacher 12"):
        losses.get("cid_cluster", centroids=c, student_dim=8, teacher_dim=12)


def test_sample_classes_keeps_positives_unique_and_is_deterministic():
    labels = torch.tensor([5, 99_000, 5, 42])
    classes, columns = sample_classes(labels, 100_000, 1000)
    assert len(classes) == 1000 and len(classes.unique()) == 1000
    assert torch.equal(classes[columns], labels)
    again, _ = sample_classes(labels.clone(), 100_000, 1000)
    assert torch.equal(classes, again)
    other, _ = sample_classes(torch.tensor([5, 99_000, 5, 43]), 100_000, 1000)
    assert not torch.equal(classes[3:], other[3:])
    # negatives are spread over all classes, not the smallest ids (unique() sorts; we reshuffle)
    assert classes[3:].float().mean() > 30_000


def test_partial_fc_at_100k_clusters_equals_softmax_over_sampled_classes():
    k, d = 100_000, 8
    c = centroids(k=k, d=d, seed=3)
    s, t = student_emb(n=16, d=d), teacher_emb(n=16, d=d)
    loss = losses.get("cid_cluster", centroids=c, sample_fraction=0.001, scale=16.0, margin=0.2, learnable=True)
    value = loss(s, t)
    labels = (t.image @ c.t()).argmax(1)
    classes, _ = sample_classes(labels, k, 100)
    assert len(classes) == 100
    assert value.item() == pytest.approx(naive_cluster_loss(s, t, c, 16.0, 0.2, classes.numpy()), rel=1e-4)
    value.backward()
    touched = (loss.centroids.grad.abs().sum(1) > 0).nonzero().flatten()
    assert set(touched.tolist()) <= set(classes.tolist())


def np_ce_diag(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    return float(-np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=1))))


@pytest.mark.parametrize("intra", [False, True])
def test_instance_loss_matches_naive_reference(intra):
    s, t = student_emb(), teacher_emb()
    loss = losses.get("cid_instance", intra_modal=intra)
    sv, st = np_unit(s.image.detach().numpy()), np_unit(s.text.detach().numpy())
    tv, tt = t.image.numpy(), t.text.numpy()
    k = 1 / 0.07
    expected = 0.5 * (np_ce_diag(k * sv @ tt.T) + np_ce_diag(k * st @ tv.T))
    if intra:
        expected += 0.5 * (np_ce_diag(k * sv @ tv.T) + np_ce_diag(k * st @ tt.T))
    assert loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_instance_cross_half_is_icl_and_gradients_flow():
    s, t = student_emb(d=6), teacher_emb(d=8)
    cid = losses.get("cid_instance", student_dim=6, teacher_dim=8, intra_modal=False)
    icl = losses.get("icl", student_dim=6, teacher_dim=8)
    icl.load_state_dict(cid.state_dict())
    assert cid(s, t).item() == pytest.approx(icl(s, t).item(), rel=1e-6)
    full = losses.get("cid_instance", student_dim=6, teacher_dim=8)
    full(s, t).backward()
    assert full.cross_scale.param.grad is not None and s.image.grad.abs().sum() > 0


def test_instance_small_when_student_equals_teacher():
    g = torch.Generator().manual_seed(0)
    t = Embeddings(torch.eye(6), torch.eye(6), torch.tensor(50.0), normalized=True)
    s = Embeddings(torch.eye(6).requires_grad_(), torch.eye(6), torch.tensor(1.0))
    far = Embeddings(torch.randn(6, 6, generator=g).requires_grad_(), torch.randn(6, 6, generator=g), torch.tensor(1.0))
    loss = losses.get("cid_instance", init_scale=50.0)
    assert loss(s, t) < 1e-6 < loss(far, t)
