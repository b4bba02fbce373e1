"""The training crop policy, one value for everything that samples, replays or checks crops.

Training (:class:`~clipdistill.data.transforms.PairedTransform`), the teacher cache's stored views
(:mod:`clipdistill.cache.writer`) and the cache's manifest check (:mod:`clipdistill.cache.training`)
all take an :class:`Augmentation`, so a cache's views are replayable exactly when the two policies
compare equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """RandomResizedCrop's ``scale`` and ``ratio`` ranges, and horizontal flips.

    The default keeps flips off: the procedural data's captions say "left of", which a flip would make
    false; the scale range stays near the whole image so the caption still describes the crop.
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False

    def __post_init__(self) -> None:
        # Lists from YAML or a manifest compare equal to the tuples a default holds.
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))

    def sample_view(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int, int]:
        """One crop ``(top, left, height, width, flip)`` of a ``width`` x ``height`` image."""
        from clipdistill.data.transforms import sample_view

        return sample_view(width, height, generator, self.scale, self.ratio, self.hflip)

    def as_dict(self) -> dict:
        """As the cache manifest records it."""
        return {"scale": list(self.scale), "ratio": list(self.ratio), "hflip": self.hflip}
