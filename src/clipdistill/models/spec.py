"""How a model wants its images: the identity of its preprocessing."""
from __future__ import annotations

from dataclasses import dataclass

# open_clip's names (PreprocessCfg.resize_mode): resize the short side and center-crop; resize the long
# side and pad; resize both sides to the square, ignoring the aspect ratio (SigLIP, PE-Core, DFN-H).
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class ImageSpec:
    """Resize/normalize settings of one model (student or teacher): open_clip's preprocess cfg.

    The same sampled crop is turned into a tensor once per distinct ``ImageSpec`` (see
    ``clipdistill.data.transforms``), so teacher and student each get their own resolution,
    resize mode and normalization. It is also part of the teacher-cache manifest.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode '{self.resize_mode}' (choose from {', '.join(RESIZE_MODES)})")

    def as_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}
