"""``clipdistill inspect MODEL_SPEC``: what a model resolves to, before a cache of 400 M samples is paid for.

Prints the architecture, parameter count, embedding size, preprocessing (size, mean, std,
interpolation, resize mode), tokenizer and context length, activation, logit scale and bias, and a
weights fingerprint (the one ``clipdistill cache`` records as ``weights_fingerprint``, shortened).
MODEL_SPEC is anything ``clipdistill eval --model`` takes (``local-dir:DIR``, ``hf-hub:org/name``,
``openclip:ARCH:TAG_OR_FILE``, ``openclip:ARCH@TAG:FILE``, ``hf:DIR``, an export folder, a run
checkpoint) or a bare architecture name (random weights).
"""
from __future__ import annotations

import argparse
import json
import os

from torch import nn

from clipdistill.cache.manifest import weights_fingerprint
from clipdistill.models.guards import activation_of
from clipdistill.models.load_any import load_model

FINGERPRINT_CHARS = 16


def _spec(text: str) -> str:
    """A bare architecture name (no schema, not a path) means its random weights: ``openclip:NAME``."""
    if ":" in text or os.path.exists(text):
        return text
    return f"openclip:{text}"


def _module(encoder) -> nn.Module:
    # A Teacher wraps its open_clip / transformers model as .encoder, a Student as .model.
    return getattr(encoder, "encoder", None) or encoder.model


def _activation(encoder, module: nn.Module) -> str:
    model_cfg = getattr(encoder, "model_cfg", None)
    if model_cfg is not None:
        return activation_of(model_cfg)
    hf_config = getattr(getattr(module, "clip", None), "config", None)  # a Hugging Face model
    if hf_config is not None:
        return f"{hf_config.text_config.hidden_act} (Hugging Face {hf_config.model_type})"
    return "unknown"


def _tokenizer_name(tokenizer) -> str:
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:  # a Hugging Face tokenizer inside open_clip's or our wrapper
        return f"{type(tokenizer).__name__} ({type(inner).__name__}, vocabulary {len(inner)})"
    return type(tokenizer).__name__


def describe(spec: str, device: str = "cpu") -> dict:
    """The resolved model of ``spec`` as a JSON-able dict (what the command prints)."""
    loaded = load_model(_spec(spec), device=device)
    encoder = loaded.encoder
    module = _module(encoder)
    bias = encoder.logit_bias() if hasattr(encoder, "logit_bias") else getattr(module, "logit_bias", None)
    scale = encoder.logit_scale() if callable(getattr(encoder, "logit_scale", None)) else module.logit_scale.exp()
    tokenizer = encoder.tokenizer
    return {
        "spec": spec,
        "architecture": loaded.name,
        "weights": loaded.pretrained or "random",
        "parameters": sum(p.numel() for p in module.parameters()),
        "embed_dim": int(encoder.embed_dim),
        "preprocess": encoder.image_spec.as_dict(),
        "tokenizer": _tokenizer_name(tokenizer),
        "context_length": getattr(tokenizer, "context_length", None),
        "activation": _activation(encoder, module),
        "logit_scale": round(float(scale), 4),
        "logit_bias": None if bias is None else round(float(bias), 4),
        "fingerprint": weights_fingerprint(module)[:FINGERPRINT_CHARS],
    }


def format_text(info: dict) -> str:
    pre = info["preprocess"]
    rows = [
        ("architecture", info["architecture"]),
        ("weights", info["weights"]),
        ("parameters", f"{info['parameters']:,}"),
        ("embedding dim", info["embed_dim"]),
        ("image size", pre["size"]),
        ("mean", ", ".join(f"{v:g}" for v in pre["mean"])),
        ("std", ", ".join(f"{v:g}" for v in pre["std"])),
        ("interpolation", pre["interpolation"]),
        ("resize mode", pre["resize_mode"]),
        ("tokenizer", info["tokenizer"]),
        ("context length", info["context_length"]),
        ("activation", info["activation"]),
        ("logit scale", info["logit_scale"]),
        ("logit bias", "none (softmax)" if info["logit_bias"] is None else info["logit_bias"]),
        ("fingerprint", f"sha256 {info['fingerprint']}"),
    ]
    return "\n".join(f"{name:<15} {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdistill inspect", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model spec (as clipdistill eval --model) or an architecture name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    info = describe(args.model, device=args.device)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
