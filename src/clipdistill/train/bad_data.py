"""Counting unreadable samples, and stopping when there are too many.

Under DDP every rank reads its own share of the data, but the limit is the run's: each step the ranks
sum their counts (one all-reduce of a few integers), so all of them judge the same totals and stop
together at the same step with the same message. One rank stopping alone would leave the others
waiting forever in the step's gradient all-reduce. ``results.json`` reports the same totals.
"""
from __future__ import annotations

from collections import Counter

import torch

from clipdistill import distributed
from clipdistill.data.bad_samples import KINDS
from clipdistill.errors import UserError

# Below this many attempted samples a fraction says little; a wrong path is caught by the loader itself.
_MIN_ATTEMPTS = 200
_OTHER = "other"  # a kind not in KINDS, when summed over ranks


class BadDataTally:
    """Skipped samples per kind (``missing_file``, ``corrupt_image``, ...) against samples used.

    ``counts`` and ``good`` are the run's totals over all ranks (with those restored from a checkpoint):
    what :meth:`check`, :meth:`summary` and :meth:`state` use. Each rank also keeps the samples it read
    itself since this process started, which the totals are recomputed from after every :meth:`add`.
    """

    def __init__(self, max_fraction: float, counts: dict | None = None, good: int = 0,
                 device: torch.device | str = "cpu"):
        self.max_fraction = max_fraction
        self.device = torch.device(device)
        # Restored from a checkpoint: run totals, the same on every rank, so never summed over ranks again
        # (a resume on a different number of ranks stays right).
        self._restored, self._restored_good = Counter(counts or {}), good
        self._local, self._local_good = Counter(), 0  # this rank's own samples since it started
        self.counts, self.good = Counter(self._restored), good
        # Rows a dataset dropped while reading its listing (a CSV's malformed rows). Read again on every
        # start, so never saved; judged once against the listing's size, not against samples seen so far.
        # Every rank reads the same listing: these are never summed over ranks either.
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
        """Count this rank's batch, then recompute the totals over ranks (a collective under DDP: every
        rank must call it once per step)."""
        self._local.update(bad)
        self._local_good += good
        other = sum(n for kind, n in self._local.items() if kind not in KINDS)
        summed = distributed.sum_across_ranks([self._local_good, other, *(self._local[k] for k in KINDS)], self.device)
        good_all, other_all, *per_kind = summed
        totals = Counter({kind: n for kind, n in zip((_OTHER, *KINDS), (other_all, *per_kind)) if n})
        self.counts, self.good = self._restored + totals, self._restored_good + good_all

    def check(self) -> None:
        attempted = self.good + self.total_bad
        if attempted >= _MIN_ATTEMPTS and self.total_bad / attempted > self.max_fraction:
            # Raised before the step trains: the run's checkpoints are the ones of good steps.
            ranks = distributed.world_size()
            raise UserError(f"{self.total_bad} of {attempted} samples unreadable"
                            f"{f' (summed over {ranks} ranks)' if ranks > 1 else ''} "
                            f"({self.total_bad / attempted:.1%} > data.max_bad_fraction={self.max_fraction}): "
                            f"{dict(self.counts)}; fix the data or raise data.max_bad_fraction "
                            "(resume=latest continues from the last checkpoint)")

    def state(self) -> dict:
        """The run's totals (over ranks) so far: rank 0 saves them, every rank restores them on resume."""
        return {"counts": dict(self.counts), "good": self.good}

    @classmethod
    def from_state(cls, state: dict, max_fraction: float, device: torch.device | str = "cpu") -> "BadDataTally":
        return cls(max_fraction, state["counts"], state["good"], device=device)
