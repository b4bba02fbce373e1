"""Every broken or unusual image file: refused with its kind, or converted to RGB and used."""
import numpy as np
import pytest
from PIL import Image, ImageFile

from clipdistill.data import BadSample, decode_image
from faults.corpus import IMAGES, decompression_bomb

REFUSED = {name: kind for name, (_, kind) in IMAGES.items() if kind != "ok"}


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("as_file", [True, False], ids=["file", "bytes"])
def test_unusable_images_raise_bad_sample_of_their_kind(tmp_path, name, as_file):
    data = IMAGES[name][0]()
    source = tmp_path / name if as_file else data
    if as_file:
        source.write_bytes(data)
    with pytest.raises(BadSample) as err:
        decode_image(source, name=name)
    assert err.value.kind == REFUSED[name]
    assert name in err.value.detail  # the log line names the file


def test_missing_file(tmp_path):
    with pytest.raises(BadSample) as err:
        decode_image(tmp_path / "gone.jpg")
    assert err.value.kind == "missing_file" and "gone.jpg" in err.value.detail


def test_decompression_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    def never(self, *args, **kwargs):
        raise AssertionError("the bomb's pixels were decoded")

    # Between PIL's warning (89 M pixels) and error (179 M) limits plain PIL would go on and decode.
    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    for side in (10000, 20000, 60000):
        with pytest.raises(BadSample) as err:
            decode_image(decompression_bomb(side))
        assert err.value.kind == "decompression_bomb"


def test_cmyk_is_converted_to_rgb_colors():
    image = decode_image(IMAGES["cmyk.jpg"][0]())
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((12, 12))
    assert red < 30 and green > 225 and blue > 225  # cyan


def test_16_bit_png_is_rescaled_not_clipped():
    source = IMAGES["gray16.png"][0]()
    assert Image.open(__import__("io").BytesIO(source)).mode.startswith("I")
    pixels = np.asarray(decode_image(source))[..., 0].ravel()
    # PIL's plain convert("RGB") clips every value above 255: the whole ramp but its start turns white.
    assert pixels[0] == 0 and pixels[-1] == 255
    assert np.all(np.diff(pixels.astype(int)) >= 0) and len(np.unique(pixels)) > 200


def test_transparent_palette_pixels_become_white_and_opaque_ones_keep_their_color():
    image = decode_image(IMAGES["palette_alpha.png"][0]())
    assert image.mode == "RGB"
    assert image.getpixel((2, 12)) == (255, 255, 255)  # transparent (palette black) -> white background
    assert image.getpixel((20, 12)) == (255, 0, 0)
