"""Unreadable samples: what they are called, and the one place images are decoded."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image


# Every kind a loader counts (BadSample kinds, and "unreadable" for a dataset that lets an OSError through).
# Under DDP the training run sums each rank's counts as one fixed-order vector: a kind missing here is
# summed as "other" (tests/train/test_distributed.py checks this list against the source).
KINDS = ("corrupt_image", "decompression_bomb", "empty_caption", "empty_file", "missing_caption", "missing_file",
         "missing_image", "unreadable", "unreadable_shard", "unsafe_name")


class BadSample(Exception):
    """A sample that cannot be used (missing file, corrupt image, empty caption, ...).

    Loaders skip it and count it under ``kind``; it is never a user error on its own, only in bulk.
    """

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def decode_image(source: str | Path | bytes, name: str = "") -> Image.Image:
    """Fully decode an image file or its bytes to RGB, or raise :class:`BadSample`.

    ``.load()`` forces decoding now, so a truncated file fails here rather than later inside a
    transform. PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError,
    struct.error...), so at this boundary any decoding failure counts as corrupt.

    Kinds: ``missing_file``, ``empty_file`` (zero bytes: a failed download), ``decompression_bomb``
    (declared size over ``PIL.Image.MAX_IMAGE_PIXELS``: refused from the header, before any pixel
    buffer is allocated), ``corrupt_image`` (everything else, truncated files included). CMYK,
    16-bit and transparent images are converted (:func:`to_rgb`), not dropped.
    """
    if isinstance(source, bytes):
        if not source:
            raise BadSample("empty_file", name or "<bytes>")
        source, name = io.BytesIO(source), name or "<bytes>"
    else:
        name = name or str(source)
        if not Path(source).is_file():
            raise BadSample("missing_file", name)
        if Path(source).stat().st_size == 0:
            raise BadSample("empty_file", name)
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the pixel limit, and would then allocate the image.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSample("decompression_bomb", f"{name}: {err}") from None
    except Exception as err:  # noqa: BLE001 - see docstring
        raise BadSample("corrupt_image", f"{name}: {err}") from None


# Transparent pixels are shown over white, as a browser page would show a web image.
_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any decoded image.

    PIL's ``convert("RGB")`` clips 16-bit values at 255 (a 16-bit photo turns almost white) and drops
    alpha (transparent pixels keep whatever color they hide, often black): both are handled here.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit grayscale (PNG): rescale 0..65535 to 0..255 instead of clipping.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
