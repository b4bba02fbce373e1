"""Fake encoders and tiny in-memory datasets for the evaluator tests.

The oracle encoder reads a number back from each image (its red level) and from each text (the
first integer in it) and maps both to the same one-hot vector: its answers are known exactly.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipdistill.models.spec import ImageSpec

RED_STEP = 4  # red level per index: up to 63 distinct indices in 8-bit colour
IDENTITY_SPEC = ImageSpec(size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def solid_image(index: int, variant: int = 0, size: int = 12) -> Image.Image:
    """An image whose red level encodes ``index``; ``variant`` changes green, so images differ."""
    return Image.new("RGB", (size, size), (RED_STEP * index, (37 * variant) % 256, 100))


def first_integer(text: str) -> int:
    return int(re.search(r"\d+", text).group())


class OracleEncoder(nn.Module):
    """Image ``i`` and every text mentioning ``i`` embed to the same one-hot vector.

    Records whether it was called in train mode or with autograd on, which evaluation must prevent.
    """

    def __init__(self, dim: int = 64):
        super().__init__()
        self.dim = dim
        self.unused = nn.Linear(1, 1)  # gives the encoder parameters and a train/eval mode
        self.image_spec = IDENTITY_SPEC
        self.calls_in_train_mode = 0
        self.calls_with_grad = 0

    def _record(self) -> None:
        self.calls_in_train_mode += int(self.training or self.unused.training)
        self.calls_with_grad += int(torch.is_grad_enabled())

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[first_integer(text)] for text in texts], dtype=torch.long)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self._record()
        index = (images[:, 0].mean(dim=(1, 2)) * 255 / RED_STEP).round().long()
        return F.one_hot(index, self.dim).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self._record()
        return F.one_hot(tokens[:, 0], self.dim).float()


class ClassDataset(list):
    """A list of ``(PIL image, label)`` that also names its classes and prompts."""

    def __init__(self, items, classnames, templates):
        super().__init__(items)
        self.classnames, self.templates = classnames, templates


@pytest.fixture
def oracle_encoder() -> OracleEncoder:
    return OracleEncoder()


@pytest.fixture
def retrieval_set():
    """``retrieval_set(n, captions_per_image, caption_of=identity)``: items ``(image i, captions)``.

    The captions of image ``i`` mention ``caption_of(i)``, so a non-identity map mislabels them.
    """

    def build(num_images: int, captions_per_image: int, caption_of=lambda i: i):
        return [(solid_image(i), [f"image {caption_of(i)} caption {c}" for c in range(captions_per_image)])
                for i in range(num_images)]

    return build


@pytest.fixture
def class_set():
    """``class_set(num_classes, per_class, label_of=identity)``: images of class ``c`` labelled ``label_of(c)``."""

    def build(num_classes: int, per_class: int, label_of=lambda c: c):
        items = [(solid_image(c, variant), label_of(c)) for c in range(num_classes) for variant in range(per_class)]
        classnames = [f"class {c}" for c in range(num_classes)]
        return ClassDataset(items, classnames, templates=["a photo of a {}.", "a drawing of a {}."])

    return build


@pytest.fixture
def solid():
    """``solid(index, variant=0)``: the PIL image the oracle encoder reads as ``index``."""
    return solid_image
