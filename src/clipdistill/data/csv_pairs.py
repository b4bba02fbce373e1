"""Image–caption pairs listed in a CSV/TSV file, in open_clip's ``--csv-img-key/--csv-caption-key`` format."""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import torch

from clipdistill.data.bad_samples import BadSample, decode_image
from clipdistill.errors import UserError

log = logging.getLogger(__name__)

# Enough to see what is wrong with a file without flooding the log; the rest are only counted.
_MAX_ROW_WARNINGS = 20
_REPLACEMENT = "\ufffd"  # what errors="replace" puts for bytes that are not UTF-8


def _delimiter(separator: str) -> str:
    # A separator typed on a command line arrives as the two characters backslash, t.
    separator = {"\\t": "\t"}.get(separator, separator)
    if len(separator) != 1:
        raise UserError(f"CSV separator must be a single character, got {separator!r}")
    return separator


class CsvPairs(torch.utils.data.Dataset):
    """A header row, then one image path and one caption per row (other columns are ignored).

    Relative image paths resolve against the CSV file's folder, so a dataset folder can be moved as
    a whole. Rows with the wrong number of fields, an empty path or an empty caption are dropped at
    load and counted in ``self.bad`` (kind -> count). Images are read lazily in ``__getitem__``, which
    raises :class:`BadSample` for a missing or undecodable file.
    """

    def __init__(self, path: str | Path, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "\t"):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"CSV file not found: {self.path}")
        self.bad: Counter = Counter()
        self.replaced_captions = 0  # rows kept with undecodable caption bytes replaced
        try:
            self.images, self.captions, self.rows = self._read(image_key, caption_key, _delimiter(separator))
        except (UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"{self.path}: cannot read as UTF-8 CSV: {err}") from None
        if not self.images:
            raise UserError(f"{self.path}: no usable rows (skipped: {dict(self.bad) or 'none'})")

    def _read(self, image_key: str, caption_key: str, delimiter: str):
        images, captions, rows = [], [], []
        # errors="replace": web captions often carry a stray Latin-1 or cut multi-byte sequence; the
        # caption keeps its readable rest (bad bytes become U+FFFD) instead of costing the whole file.
        with self.path.open(newline="", encoding="utf-8", errors="replace") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise UserError(f"{self.path}: empty file, expected a header row")
            for key in (image_key, caption_key):
                if key not in header:
                    raise UserError(f"{self.path}: no column '{key}' (columns: {', '.join(header)})")
            image_col, caption_col = header.index(image_key), header.index(caption_key)
            for fields in reader:
                if not fields:  # blank line
                    continue
                kind = self._row_problem(fields, len(header), image_col, caption_col)
                if kind:
                    self._skip(kind, reader.line_num)
                    continue
                if _REPLACEMENT in fields[caption_col]:
                    self._note_replaced(reader.line_num)
                images.append(fields[image_col])
                captions.append(fields[caption_col].strip())
                rows.append(reader.line_num)
        return images, captions, rows

    @staticmethod
    def _row_problem(fields: list[str], num_columns: int, image_col: int, caption_col: int) -> str | None:
        if len(fields) != num_columns or not fields[image_col].strip():
            return "malformed_row"
        if not fields[caption_col].strip():
            return "empty_caption"
        return None

    def _skip(self, kind: str, line: int) -> None:
        self.bad[kind] += 1
        if sum(self.bad.values()) <= _MAX_ROW_WARNINGS:
            log.warning("%s row %d: skipped (%s)", self.path, line, kind)
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
