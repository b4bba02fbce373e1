"""``clipdistill report FILES... --out table.md``: merge result JSONs into one table.

Reads CLIP_benchmark's schema (``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``), which
``clipdistill eval`` writes too, so our files and CLIP_benchmark's mix in one table. One row per
file; one column per metric name met in any file. ``.csv`` output writes CSV, anything else markdown.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from clipdistill.atomic import ensure_writable_file, write_text_atomic
from clipdistill.errors import UserError

KEYS = ("model", "pretrained", "dataset", "task")


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read result file {path}: {err}") from None
    missing = [key for key in (*KEYS, "metrics") if key not in data]
    if missing:
        raise UserError(f"{path} is not a CLIP_benchmark-style result (missing {', '.join(missing)})")
    return data


def rows_of(results: list[dict]) -> tuple[list[str], list[list]]:
    """(header, rows): identity columns, then every metric name in first-seen order."""
    metric_names = list(dict.fromkeys(name for result in results for name in result["metrics"]))
    header = [*KEYS, *metric_names]
    rows = [[result[key] for key in KEYS] + [result["metrics"].get(name, "") for name in metric_names]
            for result in results]
    return header, rows


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill report", description="Merge evaluation JSONs into a table.")
    parser.add_argument("files", nargs="+", help="result JSONs (clipdistill eval or CLIP_benchmark)")
    parser.add_argument("--out", help="table file: .csv for CSV, else markdown (default: print markdown)")
    args = parser.parse_args(argv)
    if args.out:
        ensure_writable_file(args.out, what="table")
    header, rows = rows_of([read_result(path) for path in args.files])
    text = csv_text(header, rows) if args.out and args.out.endswith(".csv") else markdown(header, rows)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text, end="")
    return 0
