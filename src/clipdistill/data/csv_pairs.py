"""Image–caption pairs listed in a CSV/TSV file, in open_clip's ``--csv-img-key/--csv-caption-key`` format."""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import torch

from clipdistill.data.bad_samples import decode_image
from clipdistill.errors import UserError

log = logging.getLogger(__name__)

# Enough to see what is wrong with a file without flooding the log; the rest are only counted.
_MAX_ROW_WARNINGS = 20
_REPLACEMENT = "\ufffd"  # what errors="replace" puts for bytes that are not UTF-8


# One rule for training, the cache and `eval csv:`: a header line with tabs or commas but not both
# decides (open_clip's own .csv files are tab-separated), else the extension, else comma.
_BY_SUFFIX = {".tsv": "\t", ".csv": ","}
_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
SEPARATOR_CHOICES = "auto, tab, comma or a single character"


def separator_name(delimiter: str) -> str:
    return _NAMES.get(delimiter, repr(delimiter))


def choose_separator(path: Path, separator: str = "auto", header: str = "") -> tuple[str, str]:
    """(delimiter, how it was chosen) for ``path``.

    ``auto`` (or empty): a header line holding tabs but no comma -> tab, commas but no tab -> comma;
    otherwise ``.tsv`` -> tab, ``.csv`` -> comma, any other name -> comma. Anything else is the
    separator itself: ``tab``/``comma``, or one character (``\\t`` typed on a command line counts as a tab).
    """
    if separator in ("auto", ""):
        found = [d for d in ("\t", ",") if d in header]
        if len(found) == 1:
            return found[0], "read from the header line"
        if path.suffix.lower() in _BY_SUFFIX:
            return _BY_SUFFIX[path.suffix.lower()], f"from the {path.suffix} extension"
        return ",", "the default"
    named = {"tab": "\t", "\\t": "\t", "comma": ","}.get(separator, separator)
    if len(named) != 1:
        raise UserError(f"CSV separator must be {SEPARATOR_CHOICES}, got {separator!r}")
    return named, "as set"


class CsvPairs(torch.utils.data.Dataset):
    """A header row, then one image path and one caption per line (other columns are ignored).

    Relative image paths resolve against the CSV file's folder, so a dataset folder can be moved as
    a whole. The separator follows :func:`choose_separator`. Each physical line is one row, parsed
    on its own with the csv module's quoting rules: a row that does not parse (an unclosed quote,
    the wrong number of fields, an image path that is not UTF-8), or has an empty path or caption,
    is dropped, logged with its line number and counted in ``self.bad`` (kind -> count), and
    reading continues on the next line, so one bad row never costs the rest of the file. Images are
    read lazily in ``__getitem__``, which raises :class:`~clipdistill.data.bad_samples.BadSample` for a
    missing or undecodable file.
    """

    def __init__(self, path: str | Path, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "auto"):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"CSV file not found: {self.path}")
        self.bad: Counter = Counter()
        self.replaced_captions = 0  # rows kept with undecodable caption bytes replaced
        self.images, self.captions, self.rows = self._read(image_key, caption_key, separator)
        if not self.images:
            raise UserError(f"{self.path}: no usable rows (skipped: {dict(self.bad) or 'none'}; "
                            f"separator: {separator_name(self.separator)}, {self.separator_reason})")

    def _lines(self):
        """(line number, text) of every physical line; bytes that are not UTF-8 become U+FFFD."""
        # Binary, split on b"\n" only: a stray quote can never make one "line" swallow the next ones.
        # errors="replace": web captions often carry a stray Latin-1 or cut multi-byte sequence; the
        # caption keeps its readable rest instead of costing the row.
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                yield number, raw.rstrip(b"\r\n").decode("utf-8", errors="replace")

    def _read(self, image_key: str, caption_key: str, separator: str):
        images, captions, rows = [], [], []
        lines = self._lines()
        _, header_line = next(lines, (0, None))
        if header_line is None:
            raise UserError(f"{self.path}: empty file, expected a header row")
        header_line = header_line.removeprefix("\ufeff")  # the byte-order mark spreadsheets write
        self.separator, self.separator_reason = choose_separator(self.path, separator, header_line)
        header = _fields(header_line, self.separator)
        for key in (image_key, caption_key):
            if key not in header:
                raise UserError(f"{self.path}: no column '{key}' (columns: {', '.join(header)}; separator: "
                                f"{separator_name(self.separator)}, {self.separator_reason}; set it with "
                                f"data.separator or eval --separator: {SEPARATOR_CHOICES})")
        image_col, caption_col = header.index(image_key), header.index(caption_key)
        for line, text in lines:
            if not text.strip():  # blank line
                continue
            try:
                fields = _fields(text, self.separator)
            except ValueError as err:
                self._skip("malformed_row", str(err), line)
                continue
            problem = self._row_problem(fields, len(header), image_col, caption_col)
            if problem:
                self._skip(*problem, line)
                continue
            if _REPLACEMENT in fields[caption_col]:
                self._note_replaced(line)
            images.append(fields[image_col])
            captions.append(fields[caption_col].strip())
            rows.append(line)
        return images, captions, rows

    @staticmethod
    def _row_problem(fields: list[str], num_columns: int, image_col: int, caption_col: int) -> tuple | None:
        if len(fields) != num_columns:
            return "malformed_row", f"{len(fields)} fields, the header has {num_columns}"
        if not fields[image_col].strip():
            return "malformed_row", "no image path"
        if _REPLACEMENT in fields[image_col]:
            return "malformed_row", "image path is not valid UTF-8"
        if not fields[caption_col].strip():
            return "empty_caption", "empty caption"
        return None

    def _skip(self, kind: str, reason: str, line: int) -> None:
        self.bad[kind] += 1
        if sum(self.bad.values()) <= _MAX_ROW_WARNINGS:
            log.warning("%s row %d: skipped (%s: %s)", self.path, line, kind, reason)
        elif sum(self.bad.values()) == _MAX_ROW_WARNINGS + 1:
            log.warning("%s: more bad rows; no longer listing them", self.path)

    def _note_replaced(self, line: int) -> None:
        self.replaced_captions += 1
        if self.replaced_captions <= _MAX_ROW_WARNINGS:
            log.warning("%s row %d: caption is not valid UTF-8; undecodable bytes replaced by U+FFFD", self.path, line)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.path.parent / self.images[index]  # an absolute entry replaces the folder

    def image_id(self, index: int) -> str:
        """What identifies the row's image: rows with the same id show the same file (Flickr, COCO:
        five caption rows per image). The teacher cache embeds such an image once."""
        return str(self.image_path(index))

    def text_of(self, index: int) -> dict:
        """The row without its image: ``{"caption", "key"}`` (no file is read)."""
        return {"caption": self.captions[index], "key": f"row{self.rows[index]:09d}"}

    def __getitem__(self, index: int) -> dict:
        return {"image": decode_image(self.image_path(index)), **self.text_of(index)}

    def __repr__(self) -> str:
        return f"CsvPairs('{self.path}')"


def _fields(line: str, delimiter: str) -> list[str]:
    """One physical line split by the csv module's rules; ValueError names what is wrong with it."""
    if '"' not in line:  # the common case, and exactly what csv would return for it
        return line.split(delimiter)
    try:
        fields = next(csv.reader([line + "\n"], delimiter=delimiter))
    except csv.Error as err:  # a NUL byte, a field over csv's size limit
        raise ValueError(str(err)) from None
    # A quote that never closes runs to the end of the line and takes the line break with it.
    if any("\n" in field for field in fields):
        raise ValueError("unclosed quote")
    return fields
