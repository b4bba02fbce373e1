"""Weight inheritance: a student initialised from a slice of its teacher (TinyCLIP's manual inheritance).

``clipdistill inherit`` (:mod:`.command`) picks teacher blocks per tower (:mod:`.layers`), ranks heads,
MLP channels and embedding dims by weight magnitude or calibration activations (:mod:`.selection`,
:mod:`.calibration`), cuts the student's weights out of the teacher's (:mod:`.slicing`) and writes an
open_clip ``local-dir:`` folder. open_clip ViT image towers and text transformers only (:mod:`.towers`).
"""
from clipdistill.inherit.core import Calibration, inherit_weights
from clipdistill.inherit.selection import Selection, TowerSelection

__all__ = ["Calibration", "Selection", "TowerSelection", "inherit_weights"]
