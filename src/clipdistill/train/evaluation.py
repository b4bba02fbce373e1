"""Held-out evaluation inside training: retrieval and zero-shot on the configured data sets."""
from __future__ import annotations

from clipdistill.data.synthetic import SyntheticClassification, SyntheticRetrieval
from clipdistill.errors import UserError
from clipdistill.eval import evaluate


def _retrieval_set(spec: str, num_images: int, seed: int):
    if spec == "synthetic":
        return SyntheticRetrieval(num_images, seed=seed)
    raise UserError(f"unknown retrieval eval dataset '{spec}' (available: synthetic)")


def _zero_shot_set(spec: str, num_images: int, seed: int):
    if spec == "synthetic":
        return SyntheticClassification(num_images, seed=seed)
    raise UserError(f"unknown zero-shot eval dataset '{spec}' (available: synthetic)")


class Evaluator:
    """Builds the eval sets once (they are checked at start-up) and evaluates any encoder on them."""

    def __init__(self, *, retrieval: str, zero_shot: str, num_images: int, seed: int, batch_size: int):
        self.retrieval = _retrieval_set(retrieval, num_images, seed) if retrieval else None
        self.zero_shot = _zero_shot_set(zero_shot, num_images, seed) if zero_shot else None
        self.batch_size = batch_size

    def __call__(self, encoder) -> dict:
        if self.retrieval is None and self.zero_shot is None:
            return {}
        return evaluate(encoder, retrieval=self.retrieval, zero_shot=self.zero_shot, batch_size=self.batch_size)
