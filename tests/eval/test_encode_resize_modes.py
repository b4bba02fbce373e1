"""Evaluation (and fidelity, which encodes through the same path) renders each model in its own resize mode."""
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipdistill.eval import encode_images
from clipdistill.models.spec import ImageSpec


class PixelEncoder(nn.Module):
    """Its embedding is the rendered image itself, so the test sees exactly what evaluation fed it."""

    def __init__(self, spec: ImageSpec):
        super().__init__()
        self.image_spec = spec
        self.unused = nn.Linear(1, 1)

    def encode_image(self, images):
        return images.flatten(1)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_eval_encoding_renders_non_square_images_as_open_clip(mode):
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (20 + 6 * i, 40, 3), dtype=np.uint8)) for i in range(3)]
    spec = ImageSpec(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation="bilinear", resize_mode=mode)
    features = encode_images(PixelEncoder(spec), photos, batch_size=2)
    reference = open_clip.image_transform(16, is_train=False, mean=spec.mean, std=spec.std, resize_mode=mode,
                                          interpolation="bilinear")
    expected = F.normalize(torch.stack([reference(p) for p in photos]).flatten(1), dim=-1)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
