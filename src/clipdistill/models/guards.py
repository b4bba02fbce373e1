"""Checks that catch a teacher that would be silently wrong: its activation, and captions it cuts.

- **Activation.** OpenAI, DFN and MetaCLIP weights were trained with QuickGELU; open_clip names such
  architectures ``ViT-H-14-quickgelu``. The same weights loaded into ``ViT-H-14`` (GELU) load without
  a single key mismatch and give wrong embeddings. open_clip's pretrained table records ``quick_gelu``
  per tag, so a tag loaded into the other activation is refused, naming the right architecture.
- **Context.** PE-Core reads 32 text tokens, SigLIP 64, OpenAI CLIP 77: a caption longer than the
  teacher's context is cut for the teacher only. :func:`count_truncated` counts such captions.
"""
from __future__ import annotations

from collections.abc import Sequence

import open_clip

from clipdistill.errors import UserError

QUICKGELU_SUFFIX = "-quickgelu"


def check_activation(name: str, model_cfg: dict, tag: str) -> None:
    """Refuse weights of pretrained ``tag`` in architecture ``name`` built with the other activation."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"'{tag}' is not an open_clip pretrained tag of {name} (tags: {', '.join(tags) or 'none'})")
    if "timm_model_name" in model_cfg.get("vision_cfg", {}) and "hf_model_name" in model_cfg.get("text_cfg", {}):
        return  # timm and HF towers use their own activations; quick_gelu changes nothing there
    trained_quick, built_quick = bool(cfg.get("quick_gelu")), bool(model_cfg.get("quick_gelu"))
    if trained_quick == built_quick:
        return
    if trained_quick:
        twin = name + QUICKGELU_SUFFIX
        fix = f"use {twin}" if open_clip.get_model_config(twin) is not None else "build it with quick_gelu: true"
        raise UserError(f"{name}/{tag} was trained with QuickGELU but {name} uses GELU: the weights would load and "
                        f"give wrong embeddings; {fix}")
    plain = name[:-len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else name
    raise UserError(f"{name}/{tag} was trained with GELU but {name} uses QuickGELU; use {plain}")


def activation_of(model_cfg: dict) -> str:
    """``quick_gelu`` or ``gelu`` (what an open_clip config builds its transformer blocks with)."""
    return "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"


def token_lengths(tokenizer, captions: Sequence[str]) -> list[int] | None:
    """Untruncated token counts (special tokens included) of ``captions``, None for an unknown tokenizer.

    Knows open_clip's ``SimpleTokenizer`` (BPE) and anything wrapping a Hugging Face tokenizer as
    ``.tokenizer`` (open_clip's ``HFTokenizer``/``SigLipTokenizer``, clipdistill's ``HFTokenizer``).
    """
    captions = list(captions)
    if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        return [len(tokenizer.encode(text)) + 2 for text in captions]  # + start and end tokens
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):
        clean = getattr(tokenizer, "clean_fn", None) or (lambda text: text)
        encoded = inner([clean(text) for text in captions], truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]
    return None


def context_length_of(tokenizer) -> int | None:
    return getattr(tokenizer, "context_length", None)


def count_truncated(tokenizer, captions: Sequence[str]) -> int | None:
    """How many of ``captions`` are longer than ``tokenizer``'s context (None: cannot tell for this tokenizer)."""
    context = context_length_of(tokenizer)
    lengths = token_lengths(tokenizer, captions)
    if context is None or lengths is None:
        return None
    return sum(length > context for length in lengths)
