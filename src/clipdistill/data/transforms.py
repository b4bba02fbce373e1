"""One sampled crop, resized and normalized separately for each model.

Teacher and student usually disagree on resolution, resize mode and normalization (ViT-L/14 at
224 px with OpenAI statistics vs. a SigLIP teacher that squashes to 256 px with mean = std = 0.5,
say). Distillation needs both to see the *same* view, so the random crop is sampled once, recorded as
a ``view`` (top, left, height, width, flip) that can be replayed exactly (the teacher cache stores
it), and then rendered once per distinct ImageSpec by open_clip's own inference transform: each model
sees the crop exactly as it would see a photo of it (``shortest``: resize and center-crop,
``squash``: resize both sides, ``longest``: resize and pad).
"""
from __future__ import annotations

import math
from functools import lru_cache

import open_clip
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from clipdistill.data.augmentation import Augmentation
from clipdistill.models.spec import ImageSpec

VIEW_FIELDS = ("top", "left", "height", "width", "flip")


@lru_cache(maxsize=None)
def _open_clip_transform(spec: ImageSpec):
    # open_clip's validation transform, not a copy of it: resize modes, padding and rounding stay its own.
    return open_clip.image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std,
                                     resize_mode=spec.resize_mode, interpolation=spec.interpolation)


def render(image: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """``(3, S, S)``: ``image`` as the model of ``spec`` sees it at inference (open_clip's transform)."""
    return _open_clip_transform(spec)(image)


def sample_view(width: int, height: int, generator: torch.Generator, scale=(0.9, 1.0),
                ratio=(3 / 4, 4 / 3), hflip: bool = False) -> tuple[int, int, int, int, int]:
    """RandomResizedCrop's parameter sampling (torchvision's algorithm) with an explicit generator.

    Returns ``(top, left, h, w, flip)``. Drawing from ``generator`` instead of the global RNG makes
    the view a pure function of the seed, which exact resume and cache replay rely on.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    draws = torch.rand(10, 4, generator=generator).tolist()
    flip = int(hflip and torch.rand(1, generator=generator).item() < 0.5)
    for r_area, r_ratio, r_top, r_left in draws:
        target_area = area * (scale[0] + r_area * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + r_ratio * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(r_top * (height - h + 1)), height - h)
            left = min(int(r_left * (width - w + 1)), width - w)
            return top, left, h, w, flip
    # Fallback: central crop with the ratio clamped, as torchvision does.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, flip


def apply_view(image: Image.Image, view, specs: dict[str, ImageSpec]) -> dict[str, torch.Tensor]:
    """Crop ``image`` by ``view`` and return one normalized tensor per named spec.

    Specs that are equal share one tensor (no duplicated resize when teacher and student agree).
    """
    top, left, h, w, flip = (int(v) for v in view)
    crop = image.crop((left, top, left + w, top + h))
    if flip:
        crop = TF.hflip(crop)
    done: dict[ImageSpec, torch.Tensor] = {}
    out = {}
    for name, spec in specs.items():
        if spec not in done:
            done[spec] = render(crop, spec)
        out[name] = done[spec]
    return out


def _rgb(image: Image.Image) -> Image.Image:
    # convert() copies even an RGB image, and the loaders' decode_image already returns RGB.
    return image if image.mode == "RGB" else image.convert("RGB")


class PairedTransform:
    """Training augmentation: sample one view, render it for every model.

    Args:
        specs: name -> ImageSpec, e.g. ``{"student_image": s, "teacher_image": t}``.
        augmentation: how views are sampled (:class:`~clipdistill.data.augmentation.Augmentation`).
    """

    def __init__(self, specs: dict[str, ImageSpec], augmentation: Augmentation = Augmentation()):
        self.specs = dict(specs)
        self.augmentation = augmentation

    def __call__(self, image: Image.Image, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = _rgb(image)
        view = self.augmentation.sample_view(image.width, image.height, generator)
        out = apply_view(image, view, self.specs)
        out["view"] = torch.tensor(view, dtype=torch.int32)
        return out

    def replay(self, image: Image.Image, stored_views, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Render one of ``stored_views`` (``(V, 5)``, from a teacher cache) instead of sampling a view.

        Which one is drawn from ``generator``, so the choice is a pure function of (seed, epoch,
        sample). ``view_index`` says which (-1: ``stored_views`` is None, a fresh view was sampled).
        """
        if stored_views is None:
            return {**self(image, generator), "view_index": torch.tensor(-1)}
        # One stored view (cache.views=1, the default) leaves nothing to draw: the generator is not used after.
        choice = int(torch.randint(len(stored_views), (1,), generator=generator)) if len(stored_views) > 1 else 0
        view = stored_views[choice].tolist()
        out = apply_view(_rgb(image), view, self.specs)
        out["view"] = torch.tensor(view, dtype=torch.int32)
        out["view_index"] = torch.tensor(choice)
        return out


def eval_transform(spec: ImageSpec):
    """open_clip's validation preprocessing in the spec's resize mode (evaluation, fidelity, curation)."""

    def transform(image: Image.Image) -> torch.Tensor:
        return render(_rgb(image), spec)

    return transform
