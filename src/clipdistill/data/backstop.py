"""Unreadable samples while training: named in the log (up to a limit), and a stop when most are bad."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from clipdistill.errors import UserError

log = logging.getLogger("clipdistill.data.loader")
# Each reader (process) names this many skipped samples in the log; the rest are only counted.
MAX_BAD_WARNINGS = 20
_bad_warnings = 0
# Backstop against a wrong path: more than half of the first this-many attempted samples unreadable.
BACKSTOP_WINDOW = 1000


def warn_skipped(kind: str, detail: str) -> None:
    """Name a skipped sample (file, shard member) in the log, up to a limit per process."""
    global _bad_warnings
    _bad_warnings += 1
    if _bad_warnings <= MAX_BAD_WARNINGS:
        log.warning("skipped sample (%s): %s", kind, detail)
    elif _bad_warnings == MAX_BAD_WARNINGS + 1:
        log.warning("more skipped samples; no longer listing them (counts go to results.json)")


def checked(batches: Iterator[dict], name: str) -> Iterator[dict]:
    """Raise a worker's fatal report as a UserError, and stop early if most samples are unreadable."""
    attempted, bad = 0, Counter()
    for batch in batches:
        if "fatal" in batch:
            raise UserError(batch["fatal"])
        if attempted < BACKSTOP_WINDOW:
            bad.update(batch["bad"])
            attempted += len(batch["key"]) + sum(batch["bad"].values())
            total_bad = sum(bad.values())
            if total_bad > BACKSTOP_WINDOW // 2 or (attempted >= BACKSTOP_WINDOW and 2 * total_bad > attempted):
                raise UserError(f"{name}: {total_bad} of the first {attempted} samples are unreadable "
                                f"({dict(bad)}); is the data path right?")
        yield batch
