"""The bad-input corpus: every kind of broken file a web-scale image–text set contains, made in tmp_path.

Each builder returns raw bytes (or writes a file) so one definition serves files on disk, CSV rows and
tar shard members alike.
"""
import io
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image


def jpeg(color=(200, 30, 30), size=24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def noisy_png(size=48, seed=0) -> bytes:
    """Incompressible pixels: a file large enough to cut in the middle of its data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG start-of-image marker followed by garbage."""
    return b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    """Pure cyan in CMYK: RGB (0, 255, 255) once converted."""
    buffer = io.BytesIO()
    Image.new("CMYK", (24, 24), (255, 0, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png16_gradient() -> bytes:
    """A 16-bit grayscale ramp over the full 0..65535 range (PIL opens it as mode I;16)."""
    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    """Palette PNG: left half index 0 (black, fully transparent), right half index 1 (opaque red)."""
    image = Image.new("P", (24, 24), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (12, 0, 24, 24))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def decompression_bomb(side=20000) -> bytes:
    """A valid PNG header declaring side x side pixels (400 M at 20 000) over a few bytes of data.

    20 000² sits between PIL's warning limit (89 M) and its error limit (179 M): plain PIL would only
    warn and then allocate 1.2 GB for it.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# name -> (bytes, what decode_image must do: a BadSample kind, or "ok" for an image it converts and uses)
IMAGES = {
    "corrupt.jpg": (corrupt_jpeg, "corrupt_image"),
    "truncated.jpg": (truncated_jpeg, "corrupt_image"),
    "empty.jpg": (lambda: b"", "empty_file"),
    "bomb.png": (decompression_bomb, "decompression_bomb"),
    "cmyk.jpg": (cmyk_jpeg, "ok"),
    "gray16.png": (png16_gradient, "ok"),
    "palette_alpha.png": (palette_with_transparency, "ok"),
}


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
