"""Offline stand-ins for real teachers: a SigLIP-style open_clip folder (``local-dir:``) built from scratch.

The folder has what a ``hf-hub:timm/ViT-B-16-SigLIP`` download has, in miniature: an
``open_clip_config.json`` whose ``text_cfg`` names a Hugging Face tokenizer (saved in the folder, a
word-level ``tokenizers`` tokenizer built here), last-token pooling without a causal mask, a logit
bias (init -10), a squash / bilinear / mean = std = 0.5 ``preprocess_cfg``, and safetensors weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

WORDS = ["a", "red", "green", "blue", "circle", "square", "triangle", "left", "right", "of", "above", "below",
         "small", "large", "two", "the"]
SPECIALS = ["<pad>", "<unk>", "</s>"]
CONTEXT = 8
PREPROCESS = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
              "resize_mode": "squash"}
MODEL_CFG = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "init_logit_scale": 2.302585,  # log(10): SigLIP's init
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": len(SPECIALS) + len(WORDS), "width": 32, "heads": 2,
                 "layers": 1, "hf_tokenizer_name": "offline/wordlevel", "tokenizer_kwargs": {"clean": "canonicalize"},
                 "no_causal_mask": True, "pool_type": "last", "proj_bias": True},
}


def save_wordlevel_tokenizer(directory: Path) -> None:
    """A Hugging Face fast tokenizer over WORDS (pad 0, unk 1, eos 2 appended), saved to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
                            ).save_pretrained(str(directory))


def make_siglip_style_folder(directory: Path, *, seed: int = 0, preprocess: dict | None = PREPROCESS) -> Path:
    """Write the folder (config, weights, tokenizer) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG}
    if preprocess is not None:
        config["preprocess_cfg"] = preprocess
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False, pretrained_text=False)
    with torch.no_grad():
        model.logit_bias.fill_(-7.5)  # not the init: proves the bias comes from the weights file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    save_wordlevel_tokenizer(directory)
    return directory
