"""The teacher: a frozen CLIP that hands out L2-normalized embeddings.

Three sources, one interface:

- ``openclip``: an open_clip architecture (name, preset or inline dict) and a pretrained tag
  (``ViT-L-14`` + ``laion400m_e32``, downloaded by open_clip) or a local weights file;
- ``checkpoint``: an architecture and a local weights file (raw state_dict, ``{"state_dict": ...}``,
  ``{"model": ...}``, ``module.`` prefixes, ``.safetensors``);
- ``hf``: a local Hugging Face ``CLIPModel`` directory.

Frozen by construction: no parameter requires grad, ``.train()`` cannot switch it out of eval mode,
and forward runs under ``torch.inference_mode``.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.models.checkpoints import file_sha256
from clipdistill.models.spec import ImageSpec
from clipdistill.models.student import Tokenizer, build_student

SOURCES = ("openclip", "checkpoint", "hf")
PRECISIONS = ("auto", "fp32", "bf16")


class Teacher(nn.Module):
    """A frozen CLIP encoder with its own tokenizer and preprocessing.

    Args:
        encoder: a module with open_clip's interface: ``encode_image(x, normalize=False)``,
            ``encode_text(tokens, normalize=False)`` and a *log* ``logit_scale``.
        tokenizer: ``list[str] -> LongTensor`` for this teacher's text tower.
        image_spec: this teacher's input size and normalization.
        embed_dim: output dimension ``D_t``.
        identity: what identifies the weights (source, model, pretrained, path, weights_sha256);
            stored in teacher-cache manifests. ``weights_sha256`` is set for local files and HF
            directories; for an open_clip tag the tag names the weights; ``None`` with an empty
            ``pretrained`` means random weights, which identify nothing.
        precision: ``"bf16"`` runs under bf16 autocast on any device; ``"auto"`` does on CUDA only
            (bf16 matmuls are slow on CPUs without AVX512-BF16 or AMX); ``"fp32"`` never.
            Outputs are float32 either way.
    """

    def __init__(self, encoder: nn.Module, *, tokenizer: Tokenizer, image_spec: ImageSpec, embed_dim: int,
                 identity: dict, precision: str = "fp32"):
        super().__init__()
        self.precision = _check_precision(precision)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.embed_dim = int(embed_dim)
        self.identity = dict(identity)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher in train mode would apply dropout / patch dropout to its targets: never allowed.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> Embeddings:
        """Normalized float32 embeddings of a batch, as plain tensors usable in any loss."""
        return Embeddings(image=self.encode_image(images), text=self.encode_text(tokens),
                          logit_scale=self.logit_scale(), normalized=True)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder.encode_image, images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder.encode_text, tokens)

    def logit_scale(self) -> torch.Tensor:
        """The multiplicative scale ``exp(log_scale)`` (0-d float32), as open_clip's forward returns it."""
        with torch.no_grad():
            return self.encoder.logit_scale.detach().float().exp().reshape(())

    def _encode(self, encode, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            features = F.normalize(encode(inputs.to(self.device), normalize=False).float(), dim=-1)
        # Inference tensors cannot be saved for backward, so a loss multiplying them with student
        # features would fail; a clone made outside inference mode is an ordinary constant tensor.
        return features.clone()

    @property
    def compute_precision(self) -> str:
        """``bf16`` or ``fp32``: what ``precision`` resolves to on this teacher's device."""
        if self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda"):
            return "bf16"
        return "fp32"

    def _autocast(self):
        if self.compute_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def load_teacher(source: str, *, model: str | dict = "", pretrained: str = "", path: str = "",
                 device: str | torch.device = "cpu", precision: str = "fp32") -> Teacher:
    """Load a frozen teacher.

    Args:
        source: ``"openclip"`` (``model`` + ``pretrained`` tag or file), ``"checkpoint"`` (``model`` +
            ``path`` to a weights file) or ``"hf"`` (``path`` to a Hugging Face CLIPModel directory).
        model: open_clip architecture name, clipdistill preset or inline open_clip config dict.
        pretrained: open_clip pretrained tag (``laion400m_e32``) or local file; empty = random weights.
        path: weights file (checkpoint) or directory (hf).
        device: where the teacher runs.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU) | ``fp32`` | ``bf16`` (bf16 autocast on
            any device: on a CPU with AVX512-BF16 or AMX it is the faster one).
    """
    precision = _check_precision(precision)  # before loading gigabytes of weights
    if source == "openclip":
        teacher = _from_open_clip(model, pretrained, source, precision)
    elif source == "checkpoint":
        if not path:
            raise UserError("teacher.source=checkpoint needs teacher.path (a weights file)")
        if not os.path.isfile(path):
            raise UserError(f"teacher checkpoint file not found: {path}")
        teacher = _from_open_clip(model, path, source, precision)
    elif source == "hf":
        teacher = _from_hf(path, precision)
    else:
        raise UserError(f"unknown teacher source '{source}' (teacher.source: none, {', '.join(SOURCES)} or cache)")
    return teacher.to(device)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown teacher precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    return precision


def _from_open_clip(model: str | dict, weights: str, source: str, precision: str) -> Teacher:
    if not model:
        raise UserError(f"teacher.source={source} needs teacher.model (an open_clip name, preset or config)")
    # An open_clip model with its tokenizer and preprocessing: exactly what a student bundle holds.
    built = build_student(model, pretrained=weights)
    is_file = bool(weights) and os.path.isfile(weights)
    identity = {"source": source, "model": model, "pretrained": "" if source == "checkpoint" else weights,
                "path": os.path.abspath(weights) if is_file else "",
                "weights_sha256": file_sha256(weights) if is_file else None}
    return Teacher(built.model, tokenizer=built.tokenizer, image_spec=built.image_spec,
                   embed_dim=built.embed_dim, identity=identity, precision=precision)


def _from_hf(path: str, precision: str) -> Teacher:
    from clipdistill.models.hf import load_hf_clip  # keeps transformers optional

    if not path:
        raise UserError("teacher.source=hf needs teacher.path (a Hugging Face CLIPModel directory)")
    if not os.path.isdir(path):
        raise UserError(f"Hugging Face model directory not found: {path}")
    hf = load_hf_clip(path)
    identity = {"source": "hf", "model": "", "pretrained": "", "path": os.path.abspath(path),
                "weights_sha256": hf.weights_sha256}
    return Teacher(hf.encoder, tokenizer=hf.tokenizer, image_spec=hf.image_spec,
                   embed_dim=hf.encoder.embed_dim, identity=identity, precision=precision)
