"""A procedural image–text corpus: colored shapes with compositional captions.

Scenes hold one or two objects ("a large red circle left of a small blue square"). The vocabulary is
small (6 colors, 4 shapes, 2 sizes, 4 relations) so that a tiny CLIP learns it in CPU minutes, yet
captions are compositional: knowing the colors is not enough, the model must bind color to shape
and read the relation. Every caption of a scene is true of its image.

Everything is a pure function of ``(seed, stream, index)``: no files, no global RNG, any worker
renders any sample. Train, validation, retrieval and classification sets draw from different
streams, so held-out sets never repeat a training scene's random draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

# Saturated and far apart in RGB (and far from the gray background), so color is unambiguous.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 190),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("large", "small")
# Relation of the first-named object to the second, its inverse, and an alternative wording.
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_ALTERNATIVE = {"left of": "to the left of", "right of": "to the right of", "above": "over", "below": "under"}

# Object half-extent as a fraction of the image side; jittered by +-10 %.
_HALF_EXTENT = {"large": 0.18, "small": 0.09}
_TWO_OBJECT_PROBABILITY = 2 / 3
_MARGIN = 0.03  # keep objects this far (fraction of side) from the border and from the midline

# Independent random streams per use; a new stream id is a new, disjoint corpus.
_STREAMS = {"train": 0, "val": 1, "retrieval": 2, "classification": 3}


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    center: tuple[float, float]  # (x, y) in pixels, y grows downwards
    half: float  # half of the bounding-box side, pixels

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        x, y = self.center
        return x - self.half, y - self.half, x + self.half, y + self.half


@dataclass(frozen=True)
class Scene:
    """One or two objects; with two, ``relation`` says where ``objects[0]`` is relative to ``objects[1]``."""

    objects: tuple[SceneObject, ...]
    relation: str | None = None
    background: tuple[int, int, int] = (128, 128, 128)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


# ----------------------------------------------------------------------------- scene sampling

def _sample_object(rng, size_px: int, color=None, shape=None, size=None) -> tuple[str, str, str, float]:
    color = color or list(COLORS)[rng.integers(len(COLORS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    size = size or SIZES[rng.integers(len(SIZES))]
    half = _HALF_EXTENT[size] * size_px * rng.uniform(0.9, 1.1)
    return color, shape, size, half


def _single_object_scene(rng, size_px: int, color=None, shape=None, size=None) -> tuple[SceneObject, ...]:
    color, shape, size, half = _sample_object(rng, size_px, color, shape, size)
    low, high = half + _MARGIN * size_px, size_px - half - _MARGIN * size_px
    center = (rng.uniform(low, high), rng.uniform(low, high))
    return (SceneObject(color, shape, size, center, half),)


def _two_object_scene(rng, size_px: int) -> tuple[tuple[SceneObject, SceneObject], str]:
    """Two objects, one in each half of the image along the relation's axis.

    Along the other axis they differ by at most half their main-axis distance, so "left of" is
    never confused with "above". Halves plus a margin guarantee that objects never overlap.
    """
    first = _sample_object(rng, size_px)
    second = _sample_object(rng, size_px)
    while second[:2] == first[:2]:  # same color and shape would make "a red circle and a red circle"
        second = _sample_object(rng, size_px)
    relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
    first_is_low = relation in ("left of", "above")  # low = smaller x (left) or smaller y (top)
    low, high = (first, second) if first_is_low else (second, first)
    margin, mid = _MARGIN * size_px, size_px / 2
    low_main = rng.uniform(low[3] + margin, mid - low[3] - margin)
    high_main = rng.uniform(mid + high[3] + margin, size_px - high[3] - margin)
    spread = min(0.5 * (high_main - low_main), 0.2 * size_px)
    low_cross = rng.uniform(low[3] + margin, size_px - low[3] - margin)
    high_cross = np.clip(low_cross + rng.uniform(-spread, spread), high[3] + margin, size_px - high[3] - margin)
    horizontal = relation in ("left of", "right of")

    def place(obj, main, cross) -> SceneObject:
        center = (main, cross) if horizontal else (cross, main)
        return SceneObject(obj[0], obj[1], obj[2], (float(center[0]), float(center[1])), obj[3])

    placed_low, placed_high = place(low, low_main, low_cross), place(high, high_main, high_cross)
    objects = (placed_low, placed_high) if first_is_low else (placed_high, placed_low)
    return objects, relation


def _background(rng) -> tuple[int, int, int]:
    gray = rng.integers(110, 150)
    return tuple(int(gray + t) for t in rng.integers(-8, 9, size=3))


def sample_scene(rng, size_px: int) -> Scene:
    background = _background(rng)
    if rng.random() < _TWO_OBJECT_PROBABILITY:
        objects, relation = _two_object_scene(rng, size_px)
        return Scene(objects, relation, background)
    return Scene(_single_object_scene(rng, size_px), None, background)


# ----------------------------------------------------------------------------- captions

def _a(phrase: str) -> str:
    """The phrase with its indefinite article ("an orange cross"); sizes all start with a consonant."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def paraphrases(scene: Scene) -> list[str]:
    """All captions true of ``scene``, distinct. The first five name every attribute of every object."""
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        captions = [f"a {obj.phrase}", f"a picture of a {obj.phrase}", f"one {obj.phrase}",
                    f"a {obj.size} {obj.shape} that is {obj.color}", f"a {obj.phrase} on a plain background",
                    _a(f"{obj.color} {obj.shape}"), f"a {obj.size} {obj.shape}"]
    else:
        a, b = scene.objects
        rel, inverse = scene.relation, RELATIONS[scene.relation]
        captions = [f"a {a.phrase} {rel} a {b.phrase}", f"a {b.phrase} {inverse} a {a.phrase}",
                    f"a {a.phrase} {_ALTERNATIVE[rel]} a {b.phrase}",
                    f"a {b.phrase} {_ALTERNATIVE[inverse]} a {a.phrase}",
                    f"two shapes: a {a.phrase} and a {b.phrase}",
                    f"{_a(a.color)} {a.shape} {rel} {_a(b.color)} {b.shape}",
                    f"{_a(a.color)} {a.shape} and {_a(b.color)} {b.shape}",
                    f"{_a(b.color)} {b.shape} and {_a(a.color)} {a.shape}"]
    return list(dict.fromkeys(captions))


# ----------------------------------------------------------------------------- rendering

def _shape_points(shape: str, x: float, y: float, h: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x, y - h), (x + h, y + h), (x - h, y + h)]
    t = h / 3  # cross arm half-thickness
    return [(x - t, y - h), (x + t, y - h), (x + t, y - t), (x + h, y - t), (x + h, y + t), (x + t, y + t),
            (x + t, y + h), (x - t, y + h), (x - t, y + t), (x - h, y + t), (x - h, y - t), (x - t, y - t)]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, int, int]) -> None:
    if obj.shape == "circle":
        draw.ellipse(obj.box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(obj.box, fill=fill)
    else:
        draw.polygon(_shape_points(obj.shape, *obj.center, obj.half), fill=fill)


def render(scene: Scene, size_px: int, rng) -> Image.Image:
    """Draw ``scene``; ``rng`` adds mild per-object color jitter and pixel noise."""
    image = Image.new("RGB", (size_px, size_px), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = rng.integers(-15, 16, size=3)
        _draw_object(draw, obj, tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter)))
    noise = rng.integers(-6, 7, size=(size_px, size_px, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


# ----------------------------------------------------------------------------- datasets

class SyntheticPairs(torch.utils.data.Dataset):
    """Image–caption training pairs; sample ``i`` is a pure function of ``(seed, split, i)``.

    ``__getitem__(i)`` gives ``{"image": PIL RGB, "caption": str, "key": str}``; the caption is one of
    :meth:`captions` chosen by the same seed. ``split="val"`` is a disjoint stream of the same kind.
    """

    def __init__(self, num_samples: int, seed: int = 0, split: str = "train", image_size: int = 64):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.num_samples, self.seed, self.split, self.image_size = int(num_samples), int(seed), split, image_size

    def __len__(self) -> int:
        return self.num_samples

    def _check(self, index: int) -> None:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")

    def scene(self, index: int) -> Scene:
        self._check(index)
        return sample_scene(_rng(self.seed, self.split, index), self.image_size)

    def captions(self, index: int) -> list[str]:
        return paraphrases(self.scene(index))

    def __getitem__(self, index: int) -> dict:
        self._check(index)
        rng = _rng(self.seed, self.split, index)
        scene = sample_scene(rng, self.image_size)
        captions = paraphrases(scene)
        caption = captions[rng.integers(len(captions))]
        return {"image": render(scene, self.image_size, rng), "caption": caption, "key": f"{self.split}-{index:09d}"}

    def __repr__(self) -> str:
        return f"SyntheticPairs(num_samples={self.num_samples}, seed={self.seed}, split={self.split!r})"


class SyntheticRetrieval:
    """Held-out retrieval set: ``__getitem__(i) -> (PIL image, [5 captions])``, all naming every attribute."""

    captions_per_image = 5

    def __init__(self, num_images: int, seed: int = 0, image_size: int = 64):
        self.num_images, self.seed, self.image_size = int(num_images), int(seed), image_size

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Image.Image, list[str]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = _rng(self.seed, "retrieval", index)
        scene = sample_scene(rng, self.image_size)
        return render(scene, self.image_size, rng), paraphrases(scene)[: self.captions_per_image]


class SyntheticClassification:
    """Held-out zero-shot set: one *large* object, class ``"{color} {shape}"``, labels balanced (``i % classes``).

    Objects are large because a small one covers a few pixels once models downsample to 32 px: its
    shape would be a guess for teacher and student alike, and the metric would measure color only.
    """

    classnames = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    # Templates put a size or "one" before the class name, so no "a orange ..." article mismatch arises.
    templates = ["a large {}", "one {}", "one large {}", "a picture of a large {}"]

    def __init__(self, num_images: int, seed: int = 0, image_size: int = 64):
        self.num_images, self.seed, self.image_size = int(num_images), int(seed), image_size

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        label = index % len(self.classnames)
        color, shape = self.classnames[label].split()
        rng = _rng(self.seed, "classification", index)
        scene = Scene(_single_object_scene(rng, self.image_size, color, shape, "large"), None, _background(rng))
        return render(scene, self.image_size, rng), label
