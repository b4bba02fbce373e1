"""What a student keeps of its teacher: blocks, residual channels, heads, MLP channels, embedding dims.

Narrower parts are chosen by an importance score per unit (higher = kept). The default scores are
weight magnitudes (TinyCLIP's manual inheritance keeps units by magnitude too); :mod:`.calibration`
supplies activation-based scores with the same shapes. Kept indices are always sorted ascending, so
the student keeps the teacher's order of channels and heads.

Magnitude scores (squared L2 norms of the weights that read from or write to the unit):

- MLP channel j of a block: ``||c_fc.weight[j, :]||² + ||c_proj.weight[:, j]||²``;
- head h of a block: ``||in_proj_weight[q, k and v rows of h, :]||² + ||out_proj.weight[:, columns of h]||²``;
- residual channel d of a tower: the sum over the *kept* blocks of ``||in_proj_weight[:, d]||² +
  ||out_proj.weight[d, :]||² + ||c_fc.weight[:, d]||² + ||c_proj.weight[d, :]||²``, plus
  ``||projection[d, :]||²``;
- embedding dim e (shared by both towers, so image and text stay in one space):
  ``||visual.proj[:, e]||² + ||text_projection[:, e]||²``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from clipdistill.inherit.towers import Tower


@dataclass
class TowerScores:
    """Importance per unit of one teacher tower: ``width`` (W,), ``heads[b]`` (H,), ``mlp[b]`` (M,) per teacher block."""

    width: torch.Tensor
    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]


@dataclass
class TowerSelection:
    """Teacher indices a student tower keeps: ``layers[i]`` is the teacher block of student block i;
    ``heads[i]`` and ``mlp[i]`` are that block's kept heads and hidden channels."""

    layers: list[int]
    width: torch.Tensor
    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]

    def as_dict(self) -> dict:
        return {"layers": self.layers, "width": self.width.tolist(),
                "heads": [h.tolist() for h in self.heads], "mlp": [m.tolist() for m in self.mlp]}


@dataclass
class Selection:
    image: TowerSelection
    text: TowerSelection
    embed: torch.Tensor

    def as_dict(self) -> dict:
        return {"image": self.image.as_dict(), "text": self.text.as_dict(), "embed_dims": self.embed.tolist()}


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, sorted ascending; ties go to the lower index (stable)."""
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return order[:k].sort().values


def magnitude_scores(tower: Tower, kept_layers: list[int], projection: torch.Tensor) -> TowerScores:
    """Weight-magnitude importance of a teacher tower's units (see the module doc).

    ``projection``: the tower's (W, E) output projection, part of the residual channels' score.
    """
    width = projection.detach().float().pow(2).sum(1)
    heads, mlp = [], []
    for index, block in enumerate(tower.blocks):
        in_proj = block.attn.in_proj_weight.detach().float()          # (3W, W): q, k, v rows
        out_proj = block.attn.out_proj.weight.detach().float()        # (W, W): columns are heads
        c_fc, c_proj = block.mlp.c_fc.weight.detach().float(), block.mlp.c_proj.weight.detach().float()
        per_head_in = in_proj.reshape(3, tower.heads, tower.head_dim, -1).pow(2).sum((0, 2, 3))
        per_head_out = out_proj.reshape(out_proj.shape[0], tower.heads, tower.head_dim).pow(2).sum((0, 2))
        heads.append(per_head_in + per_head_out)
        mlp.append(c_fc.pow(2).sum(1) + c_proj.pow(2).sum(0))
        if index in kept_layers:
            width = width + in_proj.pow(2).sum(0) + out_proj.pow(2).sum(1) + c_fc.pow(2).sum(0) + c_proj.pow(2).sum(1)
    return TowerScores(width=width, heads=heads, mlp=mlp)


def embed_magnitude(image_projection: torch.Tensor, text_projection: torch.Tensor) -> torch.Tensor:
    return image_projection.detach().float().pow(2).sum(0) + text_projection.detach().float().pow(2).sum(0)


def select_tower(scores: TowerScores, layers: list[int], student: Tower) -> TowerSelection:
    """The student's share of each unit kind: its width, head count and MLP width, by score."""
    return TowerSelection(layers=layers, width=top_k(scores.width, student.width),
                          heads=[top_k(scores.heads[b], student.heads) for b in layers],
                          mlp=[top_k(scores.mlp[b], student.mlp_width) for b in layers])
