"""Which parts of an open_clip model inheritance understands: ViT image towers, text transformers.

A :class:`Tower` names one tower's state_dict prefix and the shapes inheritance slices along
(residual width, heads, head size, MLP width, depth). Anything else (a ResNet or timm image tower, a
Hugging Face text tower, attentional pooling) is refused with one line before any weight is touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import open_clip
from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer
from torch import nn

from clipdistill.errors import UserError


@dataclass(frozen=True)
class Tower:
    """One transformer tower of an open_clip model.

    Attributes:
        name: ``"image"`` or ``"text"``.
        prefix: what its state_dict keys start with (``"visual."``; ``""`` for CLIP's built-in text
            tower, whose keys sit at the top level; ``"text."`` for CustomTextCLIP).
        module: the module owning ``transformer.resblocks`` (and, for text, ``attn_mask``).
    """

    name: str
    prefix: str
    module: nn.Module
    width: int
    heads: int
    head_dim: int
    mlp_width: int
    layers: int

    @property
    def blocks(self) -> nn.ModuleList:
        return self.module.transformer.resblocks

    def owns(self, key: str) -> bool:
        """Whether state_dict ``key`` belongs to this tower (CLIP's text keys have no prefix)."""
        if self.prefix:
            return key.startswith(self.prefix)
        return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")

    def relative(self, key: str) -> str:
        return key[len(self.prefix):]


def towers_of(model: nn.Module, label: str) -> tuple[Tower, Tower]:
    """The (image, text) towers of an open_clip model, or a one-line UserError saying what is unsupported.

    ``label`` names the model in the message (``teacher ViT-B-32``).
    """
    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        raise UserError(f"{label}: inherit supports open_clip CLIP models, not {type(model).__name__}")
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise UserError(f"{label}: its image tower is {type(visual).__name__}; inherit supports open_clip ViT image "
                        f"towers only (ResNet and timm towers have no blocks to slice)")
    if visual.attn_pool is not None:
        raise UserError(f"{label}: attentional pooling (CoCa-style image towers) is not supported by inherit")
    text = model.text if isinstance(model, open_clip.CustomTextCLIP) else model
    if isinstance(model, open_clip.CustomTextCLIP) and not isinstance(text, TextTransformer):
        raise UserError(f"{label}: its text tower is {type(text).__name__}; inherit supports open_clip text "
                        f"transformers only (not Hugging Face text towers)")
    prefix = "text." if isinstance(model, open_clip.CustomTextCLIP) else ""
    return _tower("image", "visual.", visual, label), _tower("text", prefix, text, label)


def _tower(name: str, prefix: str, module: nn.Module, label: str) -> Tower:
    blocks = module.transformer.resblocks
    if not all(type(block) is ResidualAttentionBlock for block in blocks):
        kinds = sorted({type(block).__name__ for block in blocks})
        raise UserError(f"{label}: {name} tower blocks are {', '.join(kinds)}; inherit supports open_clip's "
                        f"ResidualAttentionBlock (no scale_attn/scale_fc/scale_heads variants)")
    attn = blocks[0].attn
    return Tower(name=name, prefix=prefix, module=module, width=attn.embed_dim, heads=attn.num_heads,
                 head_dim=attn.head_dim, mlp_width=blocks[0].mlp.c_fc.out_features, layers=len(blocks))


def check_fits(teacher: Tower, student: Tower) -> None:
    """Refuse a student tower that is not a sub-network of the teacher's (one line each)."""
    if student.head_dim != teacher.head_dim:
        raise UserError(f"{student.name} tower: student head size {student.head_dim} != teacher head size "
                        f"{teacher.head_dim}; inherit keeps whole heads, so both must be equal (pick a student "
                        f"with head_width {teacher.head_dim})")
    for what in ("layers", "width", "heads", "mlp_width"):
        if getattr(student, what) > getattr(teacher, what):
            raise UserError(f"{student.name} tower: the student has more {what.replace('_', ' ')} "
                            f"({getattr(student, what)}) than the teacher ({getattr(teacher, what)}); a student "
                            f"inherits a subset of the teacher's weights")


def check_config(model_cfg: dict, label: str) -> None:
    """The same refusals as :func:`towers_of`, read from an open_clip config before anything is built or fetched."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if vision.get("timm_model_name"):
        raise UserError(f"{label}: its image tower is the timm model {vision['timm_model_name']}; inherit supports "
                        f"open_clip ViT image towers only")
    if not isinstance(vision.get("layers", 12), int):
        raise UserError(f"{label}: its image tower is a ResNet (layers {vision['layers']}); inherit supports open_clip "
                        f"ViT image towers only")
    if text.get("hf_model_name"):
        raise UserError(f"{label}: its text tower is the Hugging Face model {text['hf_model_name']}; inherit supports "
                        f"open_clip text transformers only")
