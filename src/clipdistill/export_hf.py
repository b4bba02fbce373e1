"""``clipdistill export --format hf``: a ViT student as a Hugging Face ``CLIPModel`` directory.

open_clip's ``CLIP`` with a ViT image tower and its default text tower is the architecture OpenAI released
and ``transformers`` reimplements, so the weights map one to one (the same mapping as transformers'
``convert_clip_original_pytorch_to_hf.py``): each attention's packed ``in_proj`` is split into
``q/k/v_proj``, the two projections are transposed, names are renamed. Anything else (ResNet or timm
image towers, Hugging Face text towers, layer scale, attentional or average pooling, biased projections)
has no ``CLIPModel`` equivalent and is refused with the reason.

The directory holds what ``transformers.CLIPModel``/``CLIPProcessor.from_pretrained`` and clipdistill's
``hf:DIR`` loader read: ``config.json`` + ``model.safetensors``, the tokenizer (open_clip's BPE vocabulary
and merges as ``vocab.json``/``merges.txt``) and ``preprocessor_config.json`` (the student's resize and
normalization). The model is built by ``transformers`` and loaded strictly, so a wrong mapping cannot be
written silently; ``tests/test_export_hf.py`` checks equal embeddings against open_clip.
transformers' CLIP tokenizer skips open_clip's text cleaning (ftfy, HTML unescaping): text with entities
or unusual Unicode may tokenize differently, as with every Hugging Face CLIP.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from clipdistill.errors import UserError

# Settings of open_clip's model config that CLIPModel reproduces; any other key changes the architecture.
_VISION_KEYS = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "patch_dropout"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
_OPEN_CLIP_VOCAB = 49408  # open_clip's default (OpenAI) BPE tokenizer
_SOT, _EOT = 49406, 49407


def check_maps_to_hf(model_cfg: dict) -> None:
    """Raise UserError naming the first setting that CLIPModel cannot represent."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    unsupported = ([f"{k}" for k in model_cfg if k not in _TOP_KEYS]
                   + [f"vision_cfg.{k}" for k in vision if k not in _VISION_KEYS]
                   + [f"text_cfg.{k}" for k in text if k not in _TEXT_KEYS])
    if not isinstance(vision.get("layers", 12), int):
        unsupported.append("vision_cfg.layers (a ResNet image tower)")
    if text.get("vocab_size", _OPEN_CLIP_VOCAB) != _OPEN_CLIP_VOCAB:
        unsupported.append(f"text_cfg.vocab_size={text['vocab_size']} (not open_clip's BPE tokenizer)")
    if _image_size(vision) is None:
        unsupported.append("vision_cfg.image_size (not square)")
    if unsupported:
        raise UserError(f"--format hf: {unsupported[0]} has no transformers CLIPModel equivalent; "
                        "export as openclip (the default) instead")


def _image_size(vision: dict) -> int | None:
    """The side of a square input (open_clip allows ``224`` or ``[224, 224]``); None when not square."""
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 2 and size[0] == size[1] else None
    return int(size)


def hf_config_dict(model_cfg: dict) -> dict:
    """``CLIPConfig`` keyword arguments for an open_clip model config (defaults as open_clip's)."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"  # open_clip's default is exact GELU
    v_width, t_width = vision.get("width", 768), text.get("width", 512)
    vision_config = {"hidden_size": v_width, "intermediate_size": int(v_width * vision.get("mlp_ratio", 4.0)),
                     "num_hidden_layers": vision.get("layers", 12),
                     "num_attention_heads": v_width // vision.get("head_width", 64),
                     "image_size": _image_size(vision), "patch_size": vision.get("patch_size", 16),
                     "hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": model_cfg["embed_dim"]}
    text_config = {"vocab_size": _OPEN_CLIP_VOCAB, "hidden_size": t_width,
                   "intermediate_size": int(t_width * text.get("mlp_ratio", 4.0)),
                   "num_hidden_layers": text.get("layers", 12), "num_attention_heads": text.get("heads", 8),
                   "max_position_embeddings": text.get("context_length", 77), "hidden_act": act,
                   "layer_norm_eps": 1e-5, "projection_dim": model_cfg["embed_dim"],
                   # Pool at the first end-of-text token, as open_clip's argmax over token ids does.
                   "bos_token_id": _SOT, "eos_token_id": _EOT, "pad_token_id": _EOT}
    return {"vision_config": vision_config, "text_config": text_config, "projection_dim": model_cfg["embed_dim"]}


def _tower(state: dict, src: str, dst: str, layers: int) -> dict:
    """One transformer tower's blocks, open_clip names -> CLIPEncoder names."""
    out = {}
    for i in range(layers):
        a, b = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
        q, k, v = state[f"{a}.attn.in_proj_weight"].chunk(3)
        qb, kb, vb = state[f"{a}.attn.in_proj_bias"].chunk(3)
        out.update({f"{b}.self_attn.q_proj.weight": q, f"{b}.self_attn.k_proj.weight": k,
                    f"{b}.self_attn.v_proj.weight": v, f"{b}.self_attn.q_proj.bias": qb,
                    f"{b}.self_attn.k_proj.bias": kb, f"{b}.self_attn.v_proj.bias": vb})
        renames = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for old, new in renames.items():
            for p in ("weight", "bias"):
                out[f"{b}.{new}.{p}"] = state[f"{a}.{old}.{p}"]
    return out


def hf_state_dict(state: dict, model_cfg: dict) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state_dict -> ``transformers.CLIPModel`` state_dict."""
    v_layers, t_layers = model_cfg["vision_cfg"].get("layers", 12), model_cfg["text_cfg"].get("layers", 12)
    out = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],  # (sic) transformers' name
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"],
        **_tower(state, "visual.transformer", "vision_model.encoder", v_layers),
        **_tower(state, "transformer", "text_model.encoder", t_layers),
    }
    return {key: value.detach().cpu().contiguous().clone() for key, value in out.items()}


def _save_tokenizer(transformers, directory: Path, context_length: int) -> None:
    """open_clip's BPE (vocabulary and merges, in rank order) as a transformers CLIPTokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    # transformers' names for the two special tokens (open_clip calls them <start_of_text>/<end_of_text>).
    for token, index in list(vocab.items()):
        if index in (_SOT, _EOT):
            del vocab[token]
    vocab.update({"<|startoftext|>": _SOT, "<|endoftext|>": _EOT})
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = transformers.CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                               model_max_length=context_length, pad_token="<|endoftext|>")
        tokenizer.save_pretrained(str(directory))


def check_resize_maps_to_hf(image_spec) -> None:
    """CLIPImageProcessor resizes the shortest edge and center-crops, or squashes to height x width; it cannot
    resize the longest edge and pad (open_clip's ``longest``)."""
    if image_spec.resize_mode == "longest":
        raise UserError("the student's preprocessing resizes the longest edge and pads (resize_mode longest), "
                        "which transformers' CLIPImageProcessor cannot do: export --format openclip instead")


def _save_image_processor(transformers, directory: Path, image_spec) -> None:
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(image_spec.interpolation, 3)
    side = image_spec.size
    # shortest: resize the short side, center crop (CLIP's processor); squash: straight to side x side (SigLIP's).
    resize = ({"size": {"shortest_edge": side}, "do_center_crop": True}
              if image_spec.resize_mode == "shortest" else {"size": {"height": side, "width": side},
                                                             "do_center_crop": False})
    processor = transformers.CLIPImageProcessor(**resize, crop_size={"height": side, "width": side},
                                                image_mean=list(image_spec.mean), image_std=list(image_spec.std),
                                                resample=resample)
    processor.save_pretrained(str(directory))


def write_hf(student, out_dir: str | Path) -> Path:
    """Write ``student`` (a clipdistill Student: open_clip model, model_cfg, image_spec) as a CLIPModel directory.

    Everything is written to a temporary directory next to ``out_dir`` first; each file then replaces its
    namesake, so a failure leaves the previous export's files, not half-written ones.
    """
    try:
        import transformers
    except ImportError:
        raise UserError("--format hf needs transformers: pip install clipdistill[hf]") from None
    check_maps_to_hf(student.model_cfg)
    check_resize_maps_to_hf(student.image_spec)
    config = transformers.CLIPConfig(**hf_config_dict(student.model_cfg))
    model = transformers.CLIPModel(config).eval()
    # strict: every CLIPModel weight comes from the student and every mapped student weight is used.
    missing, unexpected = model.load_state_dict(hf_state_dict(student.model.state_dict(), student.model_cfg),
                                                strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]  # a buffer, not a weight
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> CLIPModel mapping incomplete: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            _save_tokenizer(transformers, Path(tmp), student.model_cfg["text_cfg"].get("context_length", 77))
            _save_image_processor(transformers, Path(tmp), student.image_spec)
            for path in sorted(Path(tmp).iterdir()):
                os.replace(path, out_dir / path.name)
    except OSError as err:
        raise UserError(f"could not write {out_dir}: {err.strerror or err}") from None
    return out_dir
