"""One CSV reader for training, the cache and `eval csv:`: bad rows never end the file; one separator rule."""
import csv
import logging

import pytest

from clipdistill import config as config_lib
from clipdistill.data import CsvPairs, build_dataset
from clipdistill.data.csv_pairs import choose_separator
from clipdistill.errors import UserError
from clipdistill.eval.datasets import retrieval_dataset


def listing(tmp_path, rows: list[str], name="pairs.tsv", sep="\t", header=("filepath", "title")):
    path = tmp_path / name
    path.write_text("\n".join([sep.join(header), *rows]) + "\n")
    return path


def test_an_unclosed_quote_is_one_bad_row_not_the_end_of_the_file(tmp_path, caplog):
    rows = [f"img{i}.jpg\tcaption {i}" for i in range(400)]
    rows[30] = 'img30.jpg\t"a caption whose quote never closes'  # line 32 of the file
    with caplog.at_level(logging.WARNING):
        pairs = CsvPairs(listing(tmp_path, rows))
    assert len(pairs) == 399 and dict(pairs.bad) == {"malformed_row": 1}
    assert pairs.captions[30] == "caption 31" and pairs.captions[-1] == "caption 399"
    assert any("pairs.tsv row 32:" in m and "unclosed quote" in m for m in caplog.messages), caplog.messages


def test_the_same_file_through_the_training_config_and_eval_csv(tmp_path):
    rows = [f"img{i % 7}.jpg,caption {i}" for i in range(50)]
    rows[3] = 'img3.jpg,"unclosed'
    path = listing(tmp_path, rows, name="pairs.csv", sep=",")
    data = config_lib.load(overrides=["data.kind=csv", f"data.path={path}"]).data
    assert data.separator == "auto"  # the default: a comma CSV trains without setting anything
    train = build_dataset(data.kind, path=data.path, image_key=data.image_key, caption_key=data.caption_key,
                          separator=data.separator)
    assert len(train) == 49 and dict(train.bad) == {"malformed_row": 1}
    evaluated = retrieval_dataset(f"csv:{path}")
    assert len(evaluated) == 7 and sum(len(c) for c in evaluated.captions) == 49
    assert evaluated.skipped_rows == 1
    assert evaluated.captions[0] == ["caption 0", "caption 7", "caption 14", "caption 21", "caption 28",
                                     "caption 35", "caption 42", "caption 49"]


def test_wrong_field_counts_undecodable_paths_and_csv_errors_are_counted_and_named(tmp_path, caplog):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"filepath\ttitle\n"
                     b"a.jpg\tfine\n"
                     b"a.jpg\ttoo\tmany\n"  # line 3
                     b"only-one-field\n"  # line 4
                     b"caf\xe9.jpg\tpath is Latin-1\n"  # line 5
                     b'a.jpg\t"' + b"x" * 140_000 + b'"\n'  # line 6: over the csv module's field limit
                     b"b.jpg\talso fine\r\n")  # CRLF endings are fine
    with caplog.at_level(logging.WARNING):
        pairs = CsvPairs(path)
    assert pairs.captions == ["fine", "also fine"] and pairs.rows == [2, 7]
    assert dict(pairs.bad) == {"malformed_row": 4}
    for line, reason in [(3, "3 fields, the header has 2"), (4, "1 fields"), (5, "not valid UTF-8"), (6, "field limit")]:
        assert any(f"row {line}:" in m and reason in m for m in caplog.messages), (line, caplog.messages)


def test_well_formed_quoting_reads_as_the_csv_module_does(tmp_path):
    rows = ['a.jpg,"a red, square"', 'b.jpg,"she said ""hi"""', 'c.jpg,a 12" record', 'd.jpg,"quoted" then more',
            "e.jpg,plain"]
    path = listing(tmp_path, rows, name="q.csv", sep=",")
    with open(path, newline="") as file:
        expected = [row[1].strip() for row in list(csv.reader(file))[1:]]
    assert CsvPairs(path).captions == expected
    assert expected[:3] == ["a red, square", 'she said "hi"', 'a 12" record']


@pytest.mark.parametrize("name, header_sep, given, expected", [
    ("p.tsv", "\t", "auto", "\t"), ("p.csv", ",", "auto", ","), ("p.CSV", ",", "", ","),
    ("p.txt", "\t", "auto", "\t"), ("p.txt", ",", "auto", ","), ("p.csv", "\t", "tab", "\t"),
    ("p.tsv", ",", "comma", ","), ("p.dat", ";", ";", ";"), ("p.csv", "\t", "\\t", "\t"),
    ("p.csv", "\t", "auto", "\t"), ("p.tsv", ",", "auto", ",")])  # open_clip's tab-separated .csv
def test_one_separator_rule(tmp_path, name, header_sep, given, expected):
    path = listing(tmp_path, ["a.jpg" + header_sep + "x"], name=name, sep=header_sep)
    assert choose_separator(path, given, path.read_text().splitlines()[0])[0] == expected
    pairs = CsvPairs(path, separator=given)
    assert pairs.separator == expected and pairs.captions == ["x"]


def test_wrong_columns_name_the_separator_used_and_how_to_change_it(tmp_path):
    path = listing(tmp_path, ["a.jpg;x"], name="pairs.tsv", sep=";")  # a semicolon file named .tsv
    with pytest.raises(UserError) as err:
        CsvPairs(path)
    message = str(err.value)
    assert "no column 'filepath' (columns: filepath;title;" in message
    assert "separator: tab, from the .tsv extension" in message and "data.separator" in message
    assert "\n" not in message
    assert CsvPairs(path, separator=";").captions == ["x"]


def test_a_spreadsheet_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefffilepath,title\na.jpg,x\n".encode("utf-8"))
    assert CsvPairs(path).images == ["a.jpg"]
