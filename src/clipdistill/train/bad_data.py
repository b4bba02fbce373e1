"""Counting unreadable samples, and stopping when there are too many."""
from __future__ import annotations

from collections import Counter

from clipdistill.errors import UserError

# Below this many attempted samples a fraction says little; a wrong path is caught by the loader itself.
_MIN_ATTEMPTS = 200


class BadDataTally:
    """Skipped samples per kind (``missing_file``, ``corrupt_image``, ...) against samples used."""

    def __init__(self, max_fraction: float, counts: dict | None = None, good: int = 0):
        self.max_fraction = max_fraction
        self.counts = Counter(counts or {})
        self.good = good
        # Rows a dataset dropped while reading its listing (a CSV's malformed rows). Read again on every
        # start, so never saved; judged once against the listing's size, not against samples seen so far.
        self.listed: Counter = Counter()

    def add_listed(self, bad: dict, usable: int) -> None:
        self.listed = Counter(bad)
        dropped = sum(self.listed.values())
        if dropped and dropped / (dropped + usable) > self.max_fraction:
            raise UserError(f"{dropped} of {dropped + usable} rows unusable "
                            f"({dropped / (dropped + usable):.1%} > data.max_bad_fraction={self.max_fraction}): "
                            f"{dict(self.listed)}")

    def summary(self) -> dict:
        """Every skipped sample or row by kind: what results.json reports as ``bad_samples``."""
        return dict(self.counts + self.listed)

    @property
    def total_bad(self) -> int:
        return sum(self.counts.values())

    def add(self, bad: dict, good: int) -> None:
        self.counts.update(bad)
        self.good += good

    def check(self) -> None:
        attempted = self.good + self.total_bad
        if attempted >= _MIN_ATTEMPTS and self.total_bad / attempted > self.max_fraction:
            # Raised before the step trains: the run's checkpoints are the ones of good steps.
            raise UserError(f"{self.total_bad} of {attempted} samples unreadable "
                            f"({self.total_bad / attempted:.1%} > data.max_bad_fraction={self.max_fraction}): "
                            f"{dict(self.counts)}; fix the data or raise data.max_bad_fraction "
                            "(resume=latest continues from the last checkpoint)")

    def state(self) -> dict:
        return {"counts": dict(self.counts), "good": self.good}

    @classmethod
    def from_state(cls, state: dict, max_fraction: float) -> "BadDataTally":
        return cls(max_fraction, state["counts"], state["good"])
