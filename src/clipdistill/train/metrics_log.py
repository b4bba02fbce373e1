"""Where training numbers go: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Append-only metrics on the main rank; a no-op elsewhere."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self._file = self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._file = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
            self._writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._writer.close()
