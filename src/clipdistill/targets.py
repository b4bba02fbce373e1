"""Where teacher embeddings come from. The training loop only knows this interface.

``LiveTeacherTargets`` runs the frozen teacher on the batch; a cached implementation reads stored
embeddings instead. Both take the batch dict the loader produces and return normalized
:class:`~clipdistill.Embeddings`.
"""
from __future__ import annotations

import torch

from clipdistill.embeddings import Embeddings


class LiveTeacherTargets:
    """Run the teacher on the batch's own rendering of the shared view (``teacher_image``)."""

    def __init__(self, teacher, device: torch.device):
        self.teacher = teacher
        self.device = device

    def __call__(self, batch: dict) -> Embeddings:
        images = batch["teacher_image"].to(self.device, non_blocking=True)
        tokens = batch["teacher_text"].to(self.device, non_blocking=True)
        return self.teacher(images, tokens)
