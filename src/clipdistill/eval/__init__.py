"""Evaluate any CLIP-like encoder: retrieval recall and zero-shot classification (CLIP_benchmark metrics)."""
from __future__ import annotations

from clipdistill.eval.encode import encode_images, encode_labeled_images, encode_texts, evaluating
from clipdistill.eval.retrieval import evaluate_retrieval, retrieval_metrics
from clipdistill.eval.zero_shot import classification_metrics, evaluate_zero_shot, zero_shot_classifier

__all__ = [
    "classification_metrics", "encode_images", "encode_labeled_images", "encode_texts", "evaluate",
    "evaluate_retrieval", "evaluate_zero_shot", "evaluating", "retrieval_metrics", "zero_shot_classifier",
]


def evaluate(encoder, retrieval=None, zero_shot=None, *, batch_size: int = 256, workers: int = 0,
             progress: bool = False) -> dict[str, float]:
    """Retrieval and zero-shot metrics in one dict; either dataset may be ``None`` (skipped)."""
    options = {"batch_size": batch_size, "workers": workers, "progress": progress}
    metrics = {}
    if retrieval is not None:
        metrics.update(evaluate_retrieval(encoder, retrieval, **options))
    if zero_shot is not None:
        metrics.update(evaluate_zero_shot(encoder, zero_shot, **options))
    return metrics
