"""gd matches gradient directions and has no trivial minimiser; gd_raw (squared error) has one."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipdistill import Embeddings, losses
from clipdistill.losses.gd import infonce_gradients


def teacher_pairs(n=32, d=16, scale=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + 0.5 * torch.randn(n, d, generator=g) / math.sqrt(d), dim=-1)  # paired, noisy
    return Embeddings(image, text, torch.tensor(scale), normalized=True)


def autograd_infonce_grads(p, k, scale):
    """In float64: in fp32, autograd's softmax − one-hot loses a confident teacher's diagonal (see gd.py)."""
    p, k = p.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    loss = F.cross_entropy(float(scale) * p @ k.t(), torch.arange(len(p)), reduction="sum")
    return torch.autograd.grad(loss, (p, k))


def test_gd_equals_one_minus_cosine_of_autograd_gradients():
    t = teacher_pairs(n=6, d=5, scale=10.0)  # a scale where float64 autograd is still exact
    g = torch.Generator().manual_seed(1)
    s = Embeddings(torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.tensor(14.0))
    si, st = F.normalize(s.image, dim=-1), F.normalize(s.text, dim=-1)
    terms = []
    for (sp, sk), (tp, tk) in (((si, st), (t.image, t.text)), ((st, si), (t.text, t.image))):
        for g_s, g_t in zip(autograd_infonce_grads(sp, sk, s.logit_scale), autograd_infonce_grads(tp, tk, t.logit_scale)):
            terms += [1 - (a @ b) / (a.norm() * b.norm()) for a, b in zip(g_s, g_t)]
    expected = sum(terms) / len(terms)
    assert losses.get("gd")(s, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gd_of_a_confident_teacher_is_stable_in_fp32():
    """At τ_t = 50 the teacher's p_ii rounds to 1 in fp32: Q's diagonal must not be p_ii − 1."""
    t = teacher_pairs(n=16, d=8, scale=50.0)
    g = torch.Generator().manual_seed(4)
    s = Embeddings(torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g), torch.tensor(14.0))
    as64 = lambda e: e.with_(image=e.image.double(), text=e.text.double(), logit_scale=e.logit_scale.double())
    p = (t.logit_scale * t.image @ t.text.t()).softmax(1)
    assert (p.diagonal() == 1.0).sum() >= 4  # the regime in question: rows whose p_ii rounds to 1
    assert losses.get("gd")(s, t).item() == pytest.approx(losses.get("gd")(as64(s), as64(t)).item(), abs=1e-5)


def test_gd_zero_at_teacher_bounded_and_detaches_the_student_scale():
    t = teacher_pairs()
    at_teacher = Embeddings(t.image.clone().requires_grad_(), t.text.clone(), t.logit_scale.clone())
    assert losses.get("gd")(at_teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(2)
    scale = torch.tensor(100.0, requires_grad=True)
    s = Embeddings(torch.randn(256, 16, generator=g).requires_grad_(), torch.randn(256, 16, generator=g), scale)
    big = teacher_pairs(n=256, scale=100.0)
    value = losses.get("gd")(s, big)
    assert 0.0 < value.item() <= 2.0  # 1 − cos, whatever N and τ ...
    assert losses.get("gd_raw")(s, big).item() > 100  # ... while the squared error grows with N·τ²
    value.backward()
    assert scale.grad is None and s.image.grad.abs().sum() > 0


def optimise_alone(name, steps=150):
    """A linear student trained on ``name`` alone against a fixed teacher; returns (before, after) metrics:
    mean pairwise cosine of student images, mean ‖g_s‖², mean cos(g_s, g_t) of the image-anchor gradients."""
    t = teacher_pairs()
    g = torch.Generator().manual_seed(3)
    x_image, x_text = torch.randn(32, 24, generator=g), torch.randn(32, 24, generator=g)
    torch.manual_seed(0)
    towers = torch.nn.Linear(24, 16), torch.nn.Linear(24, 16)
    scale = torch.tensor(1 / 0.07)
    loss = losses.get(name)
    optimizer = torch.optim.Adam([p for tower in towers for p in tower.parameters()], lr=0.01)

    def metrics():
        with torch.no_grad():
            image, text = F.normalize(towers[0](x_image), dim=-1), F.normalize(towers[1](x_text), dim=-1)
            pairwise = (image @ image.t())[~torch.eye(32, dtype=torch.bool)].mean().item()
            g_s, _ = infonce_gradients(image, text, scale)
            g_t, _ = infonce_gradients(t.image, t.text, t.logit_scale)
            return pairwise, g_s.pow(2).sum(1).mean().item(), F.cosine_similarity(g_s, g_t, dim=1).mean().item()

    before = metrics()
    for _ in range(steps):
        value = loss(Embeddings(towers[0](x_image), towers[1](x_text), scale), t)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return before, metrics()


def test_gd_alone_matches_directions_without_collapsing():
    (pair0, norm0, cos0), (pair, norm, cos) = optimise_alone("gd")
    assert abs(cos0) < 0.1
    assert cos > 0.3  # it learns the teacher's gradient directions (measured: 0.02 -> 0.65)
    assert pair < 0.5  # the student's images do not collapse onto one point ...
    assert norm > 0.1 * norm0  # ... nor do its gradients vanish (measured: 294 -> 137; pairwise cos 0.01 -> 0.08)


def test_gd_raw_alone_reaches_its_trivial_minimiser():
    """The failure gd avoids, measured by the same toy: the test above can tell the two apart."""
    (_, norm0, _), (_, norm, cos) = optimise_alone("gd_raw")
    assert norm < 0.01 * norm0  # gradients shrunk (measured: 294 -> 0.13) ...
    assert abs(cos) < 0.1  # ... without matching directions (measured: 0.02 -> 0.06)
