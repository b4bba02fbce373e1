"""Unreadable samples: what they are called, and the one place images are decoded."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


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
    struct.error, DecompressionBombError...), so at this boundary any decoding failure counts as corrupt.
    """
    if isinstance(source, bytes):
        source, name = io.BytesIO(source), name or "<bytes>"
    else:
        name = name or str(source)
        if not Path(source).is_file():
            raise BadSample("missing_file", name)
    try:
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - see docstring
        raise BadSample("corrupt_image", f"{name}: {err}") from None
