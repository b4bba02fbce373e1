"""Inherit a student's weights from its teacher: choose blocks, score units, slice (TinyCLIP's manual inheritance)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipdistill.errors import UserError
from clipdistill.inherit.layers import choose_layers
from clipdistill.inherit.selection import (Selection, TowerScores, embed_magnitude, magnitude_scores, select_tower,
                                           top_k)
from clipdistill.inherit.slicing import inherited_state_dict
from clipdistill.inherit.towers import Tower, check_fits, towers_of


@dataclass
class Calibration:
    """A batch of the training data, preprocessed and tokenized for the teacher: activation-based importance."""

    images: torch.Tensor
    tokens: torch.Tensor


def projection_of(tower: Tower) -> torch.Tensor:
    """The tower's (width, embed_dim) output projection; towers without a plain matrix are refused."""
    projection = getattr(tower.module, "proj" if tower.name == "image" else "text_projection", None)
    if not isinstance(projection, torch.Tensor) or projection.ndim != 2:
        raise UserError(f"{tower.name} tower: inherit needs open_clip's plain projection matrix "
                        f"({'proj' if tower.name == 'image' else 'text_projection'}), this model has "
                        f"{type(projection).__name__}")
    return projection


def inherit_weights(teacher: nn.Module, student: nn.Module, *, image_layers: str = "uniform",
                    text_layers: str = "uniform", calibration: Calibration | None = None,
                    labels: tuple[str, str] = ("teacher", "student")) -> tuple[dict, Selection]:
    """Fill ``student`` (an open_clip CLIP, modified in place) with the selected weights of ``teacher``.

    Args:
        image_layers, text_layers: a layer choice per tower (see :mod:`clipdistill.inherit.layers`).
        calibration: when given, heads, channels and embedding dims are ranked by their activations on
            this batch (see :mod:`clipdistill.inherit.calibration`); otherwise by weight magnitude.
        labels: how messages name the two models.

    Returns:
        the student's state_dict and the :class:`Selection` (teacher indices kept).
    """
    t_towers, s_towers = towers_of(teacher, labels[0]), towers_of(student, labels[1])
    for t_tower, s_tower in zip(t_towers, s_towers):
        check_fits(t_tower, s_tower)
    s_embed = projection_of(s_towers[0]).shape[1]
    if s_embed > projection_of(t_towers[0]).shape[1]:
        raise UserError(f"the student's embed_dim {s_embed} exceeds the teacher's "
                        f"{projection_of(t_towers[0]).shape[1]}")
    layer_choices = {"image": image_layers, "text": text_layers}
    kept = {t.name: choose_layers(layer_choices[t.name], t.layers, s.layers, t.name)
            for t, s in zip(t_towers, s_towers)}
    scores, embed_scores = _scores(teacher, t_towers, kept, calibration)
    selection = Selection(image=select_tower(scores["image"], kept["image"], s_towers[0]),
                          text=select_tower(scores["text"], kept["text"], s_towers[1]),
                          embed=top_k(embed_scores, s_embed))
    state_dict = inherited_state_dict(teacher, student, {"teacher": t_towers, "student": s_towers}, selection)
    return state_dict, selection


def _scores(teacher, t_towers, kept, calibration) -> tuple[dict[str, TowerScores], torch.Tensor]:
    if calibration is not None:
        from clipdistill.inherit.calibration import activation_scores

        return activation_scores(teacher, t_towers, kept, calibration)
    scores = {t.name: magnitude_scores(t, kept[t.name], projection_of(t)) for t in t_towers}
    return scores, embed_magnitude(projection_of(t_towers[0]), projection_of(t_towers[1]))
