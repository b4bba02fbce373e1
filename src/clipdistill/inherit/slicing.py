"""The student's state_dict, cut out of the teacher's by a :class:`~.selection.Selection`.

Every student parameter is named by a rule saying what each of its axes indexes: ``D`` the tower's
residual channels, ``E`` the shared embedding dims, ``QKV`` the q/k/v rows of the kept heads, ``HEAD``
the columns of the kept heads, ``M`` the block's MLP channels, ``POS`` positions (interpolated or cut
when the grid or context differs), ``*`` an axis that must match as is (patch pixels, vocabulary).
A parameter no rule names is refused: silently leaving it random would hide a half-inherited model.
"""
from __future__ import annotations

import re

import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import nn

from clipdistill.errors import UserError
from clipdistill.inherit.selection import Selection, TowerSelection
from clipdistill.inherit.towers import Tower

_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_RULES = {
    "ln_1.weight": "D", "ln_1.bias": "D", "ln_2.weight": "D", "ln_2.bias": "D",
    "ls_1.gamma": "D", "ls_2.gamma": "D", "attn.out_proj.bias": "D", "mlp.c_proj.bias": "D",
    "attn.in_proj_weight": ("QKV", "D"), "attn.in_proj_bias": "QKV", "attn.out_proj.weight": ("D", "HEAD"),
    "mlp.c_fc.weight": ("M", "D"), "mlp.c_fc.bias": "M", "mlp.c_proj.weight": ("D", "M"),
}
_IMAGE_RULES = {
    "class_embedding": "D", "positional_embedding": ("POS", "D"), "conv1.weight": ("D", "*", "*", "*"),
    "ln_pre.weight": "D", "ln_pre.bias": "D", "ln_post.weight": "D", "ln_post.bias": "D", "proj": ("D", "E"),
}
_TEXT_RULES = {
    "token_embedding.weight": ("*", "D"), "positional_embedding": ("POS", "D"),
    "ln_final.weight": "D", "ln_final.bias": "D", "text_projection": ("D", "E"),
}
_SHARED = ("logit_scale", "logit_bias")


def inherited_state_dict(teacher: nn.Module, student: nn.Module, towers: dict, selection: Selection) -> dict:
    """A state_dict for ``student`` holding the teacher's selected weights; loaded strictly into it.

    ``towers``: ``{"teacher": (image, text), "student": (image, text)}`` as :func:`~.towers.towers_of` gives.
    """
    source = teacher.state_dict()
    result = {}
    for key, target in student.state_dict().items():
        if key in _SHARED:
            result[key] = _copy_shared(key, source, target)
            continue
        index = 0 if towers["student"][0].owns(key) else 1
        t_tower, s_tower = towers["teacher"][index], towers["student"][index]
        chosen = selection.image if index == 0 else selection.text
        result[key] = _inherit(key, source, target, t_tower, s_tower, chosen, selection.embed, student)
    student.load_state_dict(result, strict=True)
    return result


def _copy_shared(key: str, source: dict, target: torch.Tensor) -> torch.Tensor:
    if key not in source:
        raise UserError(f"the student has '{key}' but the teacher does not (a sigmoid-loss student needs a "
                        f"sigmoid-loss teacher)")
    return source[key].detach().clone().to(target.dtype)


def _inherit(key, source, target, t_tower: Tower, s_tower: Tower, chosen: TowerSelection, embed, student):
    relative = s_tower.relative(key)
    block = _BLOCK.fullmatch(relative)
    if block:
        student_block = int(block.group(1))
        rule = _BLOCK_RULES.get(block.group(2))
        teacher_key = f"{t_tower.prefix}transformer.resblocks.{chosen.layers[student_block]}.{block.group(2)}"
    else:
        rule = (_IMAGE_RULES if s_tower.name == "image" else _TEXT_RULES).get(relative)
        teacher_key = t_tower.prefix + relative
        student_block = None
    if rule is None or teacher_key not in source:
        raise UserError(f"student parameter '{key}' has no inheritance rule (inherit supports open_clip's standard "
                        f"ViT and text-transformer parameters)")
    axes = (rule,) if isinstance(rule, str) else rule
    indices = _axis_indices(chosen, student_block, embed, t_tower)
    value = source[teacher_key].detach()
    for axis, role in enumerate(axes):
        if role in indices:
            value = value.index_select(axis, indices[role])
    if "POS" in axes:
        value = _positions(value, s_tower, student, target.shape[0])
    if value.shape != target.shape:
        raise UserError(f"'{key}': teacher shape {tuple(source[teacher_key].shape)} cannot become the student's "
                        f"{tuple(target.shape)} (an axis inherit does not slice differs: patch size, vocabulary)")
    return value.clone().to(target.dtype).contiguous()


def _axis_indices(chosen: TowerSelection, student_block, embed: torch.Tensor, t_tower: Tower) -> dict:
    indices = {"D": chosen.width, "E": embed}
    if student_block is not None:
        heads = chosen.heads[student_block]
        head_columns = (heads[:, None] * t_tower.head_dim + torch.arange(t_tower.head_dim)).reshape(-1)
        indices["HEAD"] = head_columns
        indices["QKV"] = torch.cat([part * t_tower.width + head_columns for part in range(3)])
        indices["M"] = chosen.mlp[student_block]
    return indices


def _positions(value: torch.Tensor, s_tower: Tower, student: nn.Module, positions: int) -> torch.Tensor:
    """Position embeddings for the student's grid / context, open_clip's own way where it has one."""
    if value.shape[0] == positions:
        return value
    if s_tower.name == "image":
        # open_clip's resize for loading a checkpoint at another resolution (class token kept, grid bicubic).
        state = {"visual.positional_embedding": value}
        resize_pos_embed(state, student)
        return state["visual.positional_embedding"]
    if positions < value.shape[0]:
        # A shorter context: token t keeps exactly the teacher's embedding of position t (interpolating would
        # shift every position the teacher learned; the causal text tower never sees the cut positions).
        return value[:positions]
    state = {"positional_embedding": value}
    resize_text_pos_embed(state, student)
    return state["positional_embedding"]
