"""CSV/TSV pairs in open_clip's format: parsing, path resolution, bad rows and bad images."""
import logging

import pytest
from PIL import Image

from clipdistill.data import BadSample, CsvPairs
from clipdistill.errors import UserError


def write_image(path, color, mode="RGB", size=(20, 12)):
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    write_image(tmp_path / "img" / "red.png", (255, 0, 0))
    write_image(tmp_path / "img" / "blue.jpg", (0, 0, 255))
    write_image(tmp_path / "img" / "gray.png", 128, mode="L")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    good = tmp_path / "img" / "truncated.jpg"
    write_image(good, (0, 255, 0), size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])
    return tmp_path


def write_tsv(folder, rows, header="filepath\ttitle\turl", name="pairs.tsv"):
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


ROWS = [
    "img/red.png\ta red square\thttp://x/1",
    "img/blue.jpg\ta blue square\thttp://x/2",
    "img/gray.png\ta gray square\thttp://x/3",
    "img/nowhere.png\ta missing image\thttp://x/4",
    "img/corrupt.png\ta corrupt image\thttp://x/5",
    "img/truncated.jpg\ta truncated image\thttp://x/6",
    "img/red.png\ttoo\tmany\tfields",  # malformed: row 8
    "img/red.png\t   \thttp://x/8",  # empty caption: row 9
    "",  # a blank line is not a row
]


def test_rows_paths_and_bad_row_counts(folder, caplog):
    with caplog.at_level(logging.WARNING):
        data = CsvPairs(write_tsv(folder, ROWS))
    assert len(data) == 6
    assert data.bad == {"malformed_row": 1, "empty_caption": 1}
    assert f"{folder / 'pairs.tsv'} row 8" in caplog.text and "row 9" in caplog.text
    first = data[0]
    assert first["caption"] == "a red square" and first["image"].mode == "RGB"
    assert first["image"].getpixel((3, 3)) == (255, 0, 0)
    assert data[2]["image"].mode == "RGB" and data[2]["image"].getpixel((0, 0)) == (128, 128, 128)
    assert len({data[i]["key"] for i in range(3)}) == 3


def test_relative_paths_resolve_against_the_csv_folder_not_the_cwd(folder, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    data = CsvPairs(write_tsv(folder, ROWS[:1]))
    assert data[0]["image"].size == (20, 12)


def test_absolute_paths_and_other_separators(folder):
    path = write_tsv(folder, [f"{folder / 'img' / 'blue.jpg'},blue,1"], header="image,caption,id", name="pairs.csv")
    data = CsvPairs(path, image_key="image", caption_key="caption", separator=",")
    assert data[0]["caption"] == "blue"
    red, green, blue = data[0]["image"].getpixel((5, 5))
    assert blue > 200 and red < 40 and green < 40
    # "\t" typed on a command line arrives as backslash + t
    assert len(CsvPairs(write_tsv(folder, ROWS[:2]), separator="\\t")) == 2


def test_quoted_fields_follow_csv_rules(folder):
    path = write_tsv(folder, ['img/red.png,"a red, square"'], header="filepath,title", name="q.csv")
    assert CsvPairs(path, separator=",")[0]["caption"] == "a red, square"


@pytest.mark.parametrize("row, kind", [(3, "missing_file"), (4, "corrupt_image"), (5, "corrupt_image")])
def test_unreadable_images_raise_bad_sample_with_kind(folder, row, kind):
    data = CsvPairs(write_tsv(folder, ROWS))
    with pytest.raises(BadSample) as err:
        data[row]
    assert err.value.kind == kind
    assert data.image_path(row).name in err.value.detail


def test_missing_column_names_it_and_the_columns_present(folder):
    path = write_tsv(folder, ROWS[:1])
    with pytest.raises(UserError) as err:
        CsvPairs(path, caption_key="caption")
    message = str(err.value)
    assert "'caption'" in message and "filepath, title, url" in message and "\n" not in message


def test_user_errors_for_missing_empty_or_unusable_files(folder):
    with pytest.raises(UserError, match="not found"):
        CsvPairs(folder / "nope.tsv")
    (folder / "empty.tsv").write_text("")
    with pytest.raises(UserError, match="header"):
        CsvPairs(folder / "empty.tsv")
    with pytest.raises(UserError, match="no usable rows"):
        CsvPairs(write_tsv(folder, ["a\tb\tc\td"]))
    with pytest.raises(UserError, match="single character"):
        CsvPairs(write_tsv(folder, ROWS[:1]), separator="::")
