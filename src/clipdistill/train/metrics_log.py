"""Where training numbers go: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from clipdistill.atomic import write_text_atomic
from clipdistill.errors import UserError


class MetricsLog:
    """Append-only metrics on the main rank; a no-op elsewhere.

    A write that fails (a full disk) stops the run with one line: the numbers of the steps since then
    would be lost, and the next checkpoint save would fail on the same disk. Checkpoints are separate
    files, so the last one is untouched.

    ``resumed_at`` (the checkpoint's step, on a resume): the steps after it are trained again, so their
    old records go: ``metrics.jsonl`` keeps the lines up to that step (and drops a line a kill cut short),
    and TensorBoard purges its later events (``purge_step``). Each step then appears once. The loop
    passes 0 when ``resume`` was asked for but no checkpoint was found: the run starts over.
    """

    def __init__(self, out_dir: Path, enabled: bool, resumed_at: int | None = None):
        self.enabled = enabled
        self._path = out_dir / "metrics.jsonl"
        self._file = self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            with self._reporting_failures():
                if resumed_at is not None and self._path.is_file():
                    _keep_records_up_to(self._path, resumed_at)
                self._file = open(self._path, "a", encoding="utf-8")
                # purge_step drops events at steps >= it: the checkpoint's own step was logged and stays.
                purge = None if resumed_at is None else resumed_at + 1
                self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        with self._reporting_failures():
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            # TensorBoard writes from a thread of its own; its failure surfaces here on a later call.
            for key, value in values.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def close(self) -> None:
        if self.enabled:
            with self._reporting_failures():
                self._file.close()
                self._writer.close()

    @contextmanager
    def _reporting_failures(self):
        try:
            yield
        except OSError as err:
            raise UserError(f"could not write training metrics in {self._path.parent} (metrics.jsonl, "
                            f"tensorboard/): {err.strerror or err}; the last checkpoint is kept") from None


def _keep_records_up_to(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) with its whole JSON lines whose ``step`` is at most ``step``."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run, cut mid-write
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
