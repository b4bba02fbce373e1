"""The procedural corpus: determinism, and captions that are true of the pixels (checked from pixels alone)."""
import re
import time
from collections import Counter

import numpy as np
import pytest

from clipdistill.data.synthetic import (COLORS, SHAPES, SyntheticClassification, SyntheticPairs,
                                        SyntheticRetrieval)

PALETTE = np.array(list(COLORS.values()), dtype=float)


# ----------------------------------------------------------------------------- a pixel oracle

def color_masks(image) -> dict[str, np.ndarray]:
    """Pixels nearest each palette color (background gray is far from all of them)."""
    pixels = np.asarray(image, dtype=float)
    distance = np.linalg.norm(pixels[:, :, None, :] - PALETTE[None, None], axis=-1)
    nearest, close = distance.argmin(-1), distance.min(-1) < 70
    return {name: (nearest == k) & close for k, name in enumerate(COLORS)}


def colors_present(image, min_pixels=20) -> set[str]:
    return {name for name, mask in color_masks(image).items() if mask.sum() >= min_pixels}


def centroid(mask) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def extent(mask) -> int:
    ys, xs = np.nonzero(mask)
    return max(ys.max() - ys.min(), xs.max() - xs.min()) + 1


def shape_of(mask) -> str:
    """Square fills its box; a triangle is narrow on top; a circle is wide at 1/6 height, a cross is not."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    quarter = max(1, box.shape[0] // 4)
    if box.mean() > 0.95:
        return "square"
    if box[:quarter].sum() < 0.5 * box[-quarter:].sum():
        return "triangle"
    return "circle" if box[box.shape[0] // 6].mean() > 0.55 else "cross"


OBJECT = r"an? (?:(large|small) )?(\w+) (circle|square|triangle|cross)"
RELATION = re.compile(OBJECT + r" (left of|right of|to the left of|to the right of|above|below|over|under) " + OBJECT)
CANONICAL = {"to the left of": "left of", "to the right of": "right of", "over": "above", "under": "below"}


def relation_holds(relation, first, second) -> bool:
    (x1, y1), (x2, y2) = first, second
    dx, dy = x1 - x2, y1 - y2
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx < 0) == (relation == "left of")
    return abs(dy) > abs(dx) and (dy < 0) == (relation == "above")


# ----------------------------------------------------------------------------- determinism

def test_same_arguments_give_identical_pixels_and_text():
    a, b = SyntheticPairs(50, seed=3), SyntheticPairs(50, seed=3)
    for i in (0, 7, 49):
        assert a[i]["image"].tobytes() == b[i]["image"].tobytes()
        assert a[i]["caption"] == b[i]["caption"] and a[i]["key"] == b[i]["key"]
        assert a.captions(i) == b.captions(i)
    r1, r2 = SyntheticRetrieval(5, seed=1)[4], SyntheticRetrieval(5, seed=1)[4]
    assert r1[0].tobytes() == r2[0].tobytes() and r1[1] == r2[1]
    c1, c2 = SyntheticClassification(30, seed=1)[29], SyntheticClassification(30, seed=1)[29]
    assert c1[0].tobytes() == c2[0].tobytes() and c1[1] == c2[1]


def test_sample_does_not_depend_on_corpus_size():
    # subset = "the first N samples" relies on this
    assert SyntheticPairs(10)[3]["image"].tobytes() == SyntheticPairs(1000)[3]["image"].tobytes()


def test_splits_and_seeds_are_different_streams():
    train, val, other = SyntheticPairs(40), SyntheticPairs(40, split="val"), SyntheticPairs(40, seed=1)
    assert all(train[i]["image"].tobytes() != val[i]["image"].tobytes() for i in range(40))
    assert all(train[i]["image"].tobytes() != other[i]["image"].tobytes() for i in range(40))
    assert {train[i]["key"] for i in range(40)}.isdisjoint(val[i]["key"] for i in range(40))


def test_caption_is_one_of_the_paraphrases_and_choice_varies():
    data = SyntheticPairs(200)
    assert all(data[i]["caption"] in data.captions(i) for i in range(200))
    positions = Counter(data.captions(i).index(data[i]["caption"]) for i in range(200))
    assert len(positions) >= 5  # not always the first paraphrase


def test_images_are_rgb_at_native_size():
    item = SyntheticPairs(1)[0]
    assert item["image"].mode == "RGB" and item["image"].size == (64, 64)
    assert SyntheticPairs(1, image_size=96)[0]["image"].size == (96, 96)


# ----------------------------------------------------------------------------- truth of captions

def test_every_paraphrase_is_true_of_the_pixels():
    data = SyntheticPairs(300, seed=5)
    checked_relations = 0
    object_counts = Counter()
    for i in range(300):
        image, captions, masks = data[i]["image"], data.captions(i), color_masks(data[i]["image"])
        assert len(captions) >= 5 and len(set(captions)) == len(captions)
        named = {word for caption in captions for word in caption.split() if word in COLORS}
        assert named == colors_present(image), (i, captions)
        relation = RELATION.search(captions[0])
        object_counts[2 if relation else 1] += 1
        if relation is None:  # one object: its shape is what the caption says
            (color,) = named
            assert shape_of(masks[color]) == re.search(OBJECT, captions[0]).group(3), (i, captions[0])
            continue
        for caption in captions:
            match = RELATION.search(caption)
            if match is None:
                continue
            size1, color1, shape1, rel, size2, color2, shape2 = match.groups()
            if color1 == color2:  # both objects in one mask: position and shape not separable by color
                continue
            assert relation_holds(CANONICAL.get(rel, rel), centroid(masks[color1]), centroid(masks[color2])), caption
            assert shape_of(masks[color1]) == shape1 and shape_of(masks[color2]) == shape2, caption
            if size1 and size2 and size1 != size2:
                large, small = (color1, color2) if size1 == "large" else (color2, color1)
                assert extent(masks[large]) > 1.5 * extent(masks[small]), caption
            checked_relations += 1
    assert checked_relations > 500 and object_counts[1] > 50 and object_counts[2] > 150


def test_relations_and_vocabulary_are_all_used():
    data = SyntheticPairs(400)
    text = " ".join(c for i in range(400) for c in data.captions(i))
    for word in [*COLORS, *SHAPES, "large", "small", "left of", "right of", "above", "below"]:
        assert word in text


def test_orange_takes_an():
    text = " ".join(c for i in range(400) for c in SyntheticPairs(400).captions(i))
    assert "an orange" in text and "a orange" not in text


# ----------------------------------------------------------------------------- held-out sets

def test_retrieval_gives_five_true_distinct_captions():
    data = SyntheticRetrieval(60, seed=2)
    assert len(data) == 60
    for i in range(60):
        image, captions = data[i]
        assert len(captions) == 5 and len(set(captions)) == 5
        present = colors_present(image)
        for caption in captions:
            assert {w for w in caption.split() if w in COLORS} == present
            assert "large" in caption or "small" in caption  # the fully specific paraphrases
    with pytest.raises(IndexError):
        data[60]


def test_classification_is_balanced_and_labels_match_pixels():
    data = SyntheticClassification(24 * 4, seed=0)
    assert len(data.classnames) == 24 == len(set(data.classnames))
    assert all("{}" in template for template in data.templates)
    labels = Counter()
    for i in range(len(data)):
        image, label = data[i]
        labels[label] += 1
        color, shape = data.classnames[label].split()
        present = colors_present(image)
        assert present == {color}, (i, present, data.classnames[label])
        assert shape_of(color_masks(image)[color]) == shape
    assert set(labels.values()) == {4}


@pytest.mark.slow  # a timing/memory budget: meaningful on a quiet machine only
def test_rendering_is_fast():
    data = SyntheticPairs(400)
    start = time.perf_counter()
    for i in range(400):
        data[i]
    per_image = (time.perf_counter() - start) / 400
    assert per_image < 2e-3  # budget 0.5 ms; generous for a loaded CI machine
