"""crd_image: the teacher's image-image similarity distribution, against a naive per-row reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipdistill.embeddings import Embeddings
from clipdistill.losses import get


def naive(student_image, teacher_image, student_scale, teacher_scale, temperature):
    """Row by row: a softmax over the other images only, KL(teacher || student), averaged, times T²."""
    s, t = F.normalize(student_image, dim=-1), teacher_image
    n, total = len(s), 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        p = torch.softmax(torch.stack([teacher_scale * t[i] @ t[j] / temperature for j in others]), 0)
        q = torch.softmax(torch.stack([student_scale * s[i] @ s[j] / temperature for j in others]), 0)
        total += float((p * (p.log() - q.log())).sum())
    return total / n * temperature ** 2


def embeddings(n=6, d_s=8, d_t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = Embeddings(image=torch.randn(n, d_s, generator=g), text=torch.zeros(n, 0),
                         logit_scale=torch.tensor(20.0))
    teacher = Embeddings(image=F.normalize(torch.randn(n, d_t, generator=g), dim=-1), text=torch.zeros(n, 0),
                         logit_scale=torch.tensor(50.0), normalized=True)
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_the_naive_reference_on_caption_free_embeddings(temperature):
    student, teacher = embeddings()
    value = get("crd_image", temperature=temperature)(student, teacher)
    assert float(value) == pytest.approx(naive(student.image, teacher.image, 20.0, 50.0, temperature), rel=1e-5)


def test_fixed_scales_replace_the_models_own():
    student, teacher = embeddings(seed=1)
    value = get("crd_image", teacher_scale=10.0, student_scale=5.0)(student, teacher)
    assert float(value) == pytest.approx(naive(student.image, teacher.image, 5.0, 10.0, 1.0), rel=1e-5)


def test_zero_when_the_student_relates_its_images_as_the_teacher_does_and_gradients_are_finite():
    _, teacher = embeddings(d_t=8)
    student = Embeddings(image=(3 * teacher.image).requires_grad_(), text=torch.zeros(6, 0),
                         logit_scale=torch.tensor(50.0))
    value = get("crd_image")(student, teacher)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    moved = Embeddings(image=torch.randn(6, 8, requires_grad=True), text=torch.zeros(6, 0),
                       logit_scale=torch.tensor(50.0))
    get("crd_image")(moved, teacher).backward()
    assert torch.isfinite(moved.image.grad).all() and moved.image.grad.abs().sum() > 0


def test_local_rows_average_to_the_full_loss():
    student, teacher = embeddings(n=8)
    loss = get("crd_image")
    full = loss(student, teacher)
    halves = [loss(student.with_(local_rows=rows), teacher) for rows in (slice(0, 4), slice(4, 8))]
    assert float(sum(halves) / 2) == pytest.approx(float(full), rel=1e-6)
    assert not math.isnan(float(full))
