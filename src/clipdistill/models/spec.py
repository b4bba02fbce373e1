"""How a model wants its images: the identity of its preprocessing."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSpec:
    """Resize/normalize settings of one model (student or teacher).

    The same sampled crop is turned into a tensor once per distinct ``ImageSpec`` (see
    ``clipdistill.data.transforms``), so teacher and student each get their own resolution and
    normalization. It is also part of the teacher-cache manifest.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def as_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}
