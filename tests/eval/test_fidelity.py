"""Fidelity metrics: identical models agree perfectly; unrelated ones do not; heads round-trip."""
import pytest
import torch
import torch.nn.functional as F

from clipdistill.eval.fidelity import (evaluate_fidelity, mean_cosine, prediction_agreement,
                                       projection_from_state, projection_of, retained, similarity_kl,
                                       structure_correlation)
from clipdistill.losses.objective import build_objective


def _features(n=20, d=8, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_identical_models_score_perfect_fidelity():
    image, text = _features(seed=0), _features(seed=1)
    logits = image @ text.T
    assert prediction_agreement(logits, logits) == 1.0
    assert mean_cosine(image, image) == pytest.approx(1.0)
    assert similarity_kl(image, text, 20.0, image, text, 20.0) == pytest.approx(0.0, abs=1e-6)


def test_structure_correlation_ignores_rotation_and_dimension_but_not_shuffling():
    student = _features(d=8)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
    teacher = torch.cat([student, torch.zeros(20, 8)], dim=1) @ rotation  # same geometry, 16 dims
    assert structure_correlation(student, teacher) == pytest.approx(1.0, abs=1e-5)
    assert abs(structure_correlation(student, _features(d=16, seed=9))) < 0.3


def test_similarity_kl_matches_a_naive_sum():
    si, st, ti, tt = (_features(6, 4, seed=s) for s in range(4))
    p = (30 * ti @ tt.T).softmax(1)
    q = (10 * si @ st.T).softmax(1)
    p_t, q_t = (30 * tt @ ti.T).softmax(1), (10 * st @ si.T).softmax(1)
    naive = 0.5 * ((p * (p / q).log()).sum() / 6 + (p_t * (p_t / q_t).log()).sum() / 6)
    assert similarity_kl(si, st, 10.0, ti, tt, 30.0) == pytest.approx(naive.item(), rel=1e-5)


def test_retained_is_the_score_ratio():
    assert retained({"acc1": 0.45, "acc5": 0.9, "other": 1.0}, {"acc1": 0.5, "acc5": 0.0}) == {
        "fidelity_retained_acc1": pytest.approx(0.9)}


def test_projection_head_from_a_checkpoint_equals_the_live_one():
    objective = build_objective({"clip": {}, "fd": {}, "icl": {}}, student_dim=4, teacher_dim=6)
    head = projection_from_state(objective.state_dict())
    live = projection_of(objective)
    assert live is objective.terms["fd"].project
    x = torch.randn(3, 4)
    torch.testing.assert_close(head.image(x), live.image(x))
    torch.testing.assert_close(head.text(x), live.text(x))
    assert projection_from_state(build_objective({"clip": {}}, 4, None).state_dict()) is None


def test_an_encoder_against_itself(oracle_encoder, retrieval_set, class_set):
    oracle_encoder.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    metrics = evaluate_fidelity(oracle_encoder, oracle_encoder, retrieval=retrieval_set(8, 2), zero_shot=class_set(5, 2))
    assert metrics["fidelity_agreement_top1"] == 1.0
    assert metrics["fidelity_cosine_image"] == pytest.approx(1.0) and metrics["fidelity_cosine_text"] == pytest.approx(1.0)
    assert metrics["fidelity_similarity_kl"] == pytest.approx(0.0, abs=1e-6)
