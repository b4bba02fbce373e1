"""Evaluation inside training: any dataset spec, linear probe, fidelity against the run's teacher."""
import pytest

from clipdistill.errors import UserError
from clipdistill.losses.objective import build_objective
from clipdistill.models import build_student, load_teacher
from clipdistill.train.evaluation import Evaluator


def test_synthetic_default_keeps_the_demo_keys_and_adds_fidelity():
    student = build_student("tiny")
    teacher = load_teacher("openclip", model="tiny-teacher")
    objective = build_objective({"clip": {}, "fd": {}}, student_dim=64, teacher_dim=96)
    evaluator = Evaluator(retrieval="synthetic", zero_shot="synthetic", num_images=24, seed=0, batch_size=64,
                          teacher=teacher, objective=objective)
    metrics = evaluator(student)
    assert {"retrieval_mean_recall", "acc1", "fidelity_agreement_top1", "fidelity_similarity_kl",
            "fidelity_cosine_image", "fidelity_cosine_text"} <= set(metrics)
    assert -1 <= metrics["fidelity_cosine_image"] <= 1 and metrics["fidelity_similarity_kl"] >= 0
    # A teacher evaluated against itself is the fidelity oracle.
    self_metrics = Evaluator(retrieval="synthetic", zero_shot="synthetic", num_images=24, seed=0, batch_size=64,
                             teacher=teacher)(teacher)
    assert self_metrics["fidelity_agreement_top1"] == 1.0
    assert self_metrics["fidelity_cosine_image"] == pytest.approx(1.0)
    assert self_metrics["fidelity_similarity_kl"] == pytest.approx(0.0, abs=1e-5)
    assert self_metrics["fidelity_retained_acc1"] == pytest.approx(1.0)


def test_bad_eval_config_fails_at_start_up(tmp_path):
    with pytest.raises(UserError, match="together"):
        Evaluator(retrieval="", zero_shot="", num_images=8, seed=0, batch_size=8, linear_probe="synthetic")
    with pytest.raises(UserError):
        Evaluator(retrieval=f"flickr:{tmp_path}/none", zero_shot="", num_images=8, seed=0, batch_size=8)


def test_linear_probe_during_training():
    metrics = Evaluator(retrieval="", zero_shot="", num_images=48, seed=0, batch_size=64, linear_probe="synthetic",
                        linear_probe_train="synthetic")(build_student("tiny"))
    assert set(metrics) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}
