"""The teacher: a frozen CLIP that hands out L2-normalized embeddings.

Three sources, one interface:

- ``openclip``: an open_clip architecture (name, preset or inline dict) and a pretrained tag
  (``ViT-L-14`` + ``laion400m_e32``, downloaded by open_clip) or a local weights file; or an open_clip
  model folder ``local-dir:DIR`` / hub repo ``hf-hub:org/name`` as the model (config, weights, tokenizer);
- ``checkpoint``: an architecture and a local weights file (raw state_dict, ``{"state_dict": ...}``,
  ``{"model": ...}``, ``module.`` prefixes, ``.safetensors``), optionally with the pretrained tag the
  file is (its preprocessing and activation then come from open_clip's table); or a clipdistill run (its
  directory or one of its checkpoints): the run's student as trained, its architecture and preprocessing
  read from the run's stored config;
- ``hf``: a local Hugging Face CLIP / SigLIP / SigLIP 2 / MetaCLIP 2 directory.

Preprocessing is resolved as :mod:`clipdistill.models.preprocess` says; ``preprocess`` overrides it.

Frozen by construction: no parameter requires grad, ``.train()`` cannot switch it out of eval mode,
and forward runs under ``torch.inference_mode``.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.models import folders
from clipdistill.models.checkpoints import file_sha256, is_run_checkpoint, load_untrusted, newest_checkpoint_if_run
from clipdistill.models.spec import ImageSpec
from clipdistill.models.student import Tokenizer, build_student, trained_student

SOURCES = ("openclip", "checkpoint", "hf")
RUN_CHECKPOINT = re.compile(r"step_\d+\.pt$")
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
        model_cfg: the open_clip config it was built from (None for a Hugging Face model): what
            ``clipdistill inspect`` reports (activation).
    """

    def __init__(self, encoder: nn.Module, *, tokenizer: Tokenizer, image_spec: ImageSpec, embed_dim: int,
                 identity: dict, precision: str = "fp32", model_cfg: dict | None = None):
        super().__init__()
        self.precision = _check_precision(precision)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.embed_dim = int(embed_dim)
        self.identity = dict(identity)
        self.model_cfg = model_cfg
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher in train mode would apply dropout / patch dropout to its targets: never allowed.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None) -> Embeddings:
        """Normalized float32 embeddings of a batch, as plain tensors usable in any loss; ``tokens`` None
        (caption-free data): text is ``(B, 0)``."""
        image = self.encode_image(images)
        return Embeddings(image=image, text=self.encode_text(tokens) if tokens is not None else image[:, :0],
                          logit_scale=self.logit_scale(), normalized=True, logit_bias=self.logit_bias())

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder.encode_image, images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder.encode_text, tokens)

    def logit_scale(self) -> torch.Tensor:
        """The multiplicative scale ``exp(log_scale)`` (0-d float32), as open_clip's forward returns it."""
        with torch.no_grad():
            return self.encoder.logit_scale.detach().float().exp().reshape(())

    def logit_bias(self) -> torch.Tensor | None:
        """The additive bias of a sigmoid-trained teacher (0-d float32), None for a softmax one."""
        bias = getattr(self.encoder, "logit_bias", None)
        if bias is None:
            return None
        with torch.no_grad():
            return bias.detach().float().reshape(())

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
                 device: str | torch.device = "cpu", precision: str = "fp32", preprocess: dict | None = None) -> Teacher:
    """Load a frozen teacher.

    Args:
        source: ``"openclip"`` (``model`` + ``pretrained`` tag or file, or ``model`` = ``local-dir:DIR`` /
            ``hf-hub:org/name``), ``"checkpoint"`` (``model`` + ``path`` to a weights file, ``pretrained``
            = the tag the file is, optional; or ``path`` to a clipdistill run directory or run checkpoint,
            whose architecture ``model`` may then omit) or ``"hf"`` (``path`` to a Hugging Face directory).
        model: open_clip architecture name, clipdistill preset, inline open_clip config dict or folder name.
        pretrained: open_clip pretrained tag (``laion400m_e32``) or local file; empty = random weights.
            With ``checkpoint``: the tag whose preprocessing and activation the file has.
        path: weights file (checkpoint) or directory (hf).
        device: where the teacher runs.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU) | ``fp32`` | ``bf16`` (bf16 autocast on
            any device: on a CPU with AVX512-BF16 or AMX it is the faster one).
        preprocess: ``teacher.preprocess``: mean / std / interpolation / resize_mode that override the
            resolved preprocessing (needed only where open_clip's tables cannot decide).
    """
    precision = _check_precision(precision)  # before loading gigabytes of weights
    if source == "openclip":
        teacher = _from_open_clip(model, pretrained, "", source, precision, preprocess)
    elif source == "checkpoint":
        teacher = _from_checkpoint(model, path, pretrained, precision, preprocess)
    elif source == "hf":
        teacher = _from_hf(path, precision, preprocess)
    else:
        raise UserError(f"unknown teacher source '{source}' (teacher.source: none, {', '.join(SOURCES)} or cache)")
    return teacher.to(device)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown teacher precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    return precision


def _from_open_clip(model: str | dict, weights: str, tag: str, source: str, precision: str,
                    preprocess: dict | None) -> Teacher:
    if not model:
        raise UserError(f"teacher.source={source} needs teacher.model (an open_clip name, preset or config)")
    # An open_clip model with its tokenizer and preprocessing: exactly what a student bundle holds.
    built = build_student(model, pretrained=weights, tag=tag, preprocess=preprocess, setting="teacher.preprocess")
    file = built.weights_file
    identity = {"source": source, "model": model, "pretrained": tag if source == "checkpoint" else weights,
                "path": os.path.dirname(file) if file and folders.is_folder_name(model) else file,
                "weights_sha256": file_sha256(file) if file else None}
    if preprocess:  # part of what the teacher is: a hybrid cache run reloads it from this identity
        identity["preprocess"] = dict(preprocess)
    return Teacher(built.model, tokenizer=built.tokenizer, image_spec=built.image_spec, embed_dim=built.embed_dim,
                   identity=identity, precision=precision, model_cfg=built.model_cfg)


def _from_checkpoint(model: str | dict, path: str, tag: str, precision: str, preprocess: dict | None) -> Teacher:
    """A weights file (``model`` names its architecture, ``tag`` what it is) or a clipdistill run's student."""
    if not path:
        raise UserError("teacher.source=checkpoint needs teacher.path (a weights file, or a clipdistill run "
                        "directory or checkpoint)")
    file = newest_checkpoint_if_run(path)
    if not file.is_file():
        raise UserError(f"teacher checkpoint file not found: {path}")
    if RUN_CHECKPOINT.search(file.name):  # train/checkpoint.py's files: a run's student, as it was trained
        state = load_untrusted(file)
        if is_run_checkpoint(state):
            return _from_run(model, state, file, precision)
    if not model:
        raise UserError(f"teacher.source=checkpoint needs teacher.model (an open_clip name, preset or config) "
                        f"for the plain weights file {file}")
    return _from_open_clip(model, str(file), tag, "checkpoint", precision, preprocess)


def _from_run(model: str | dict, state: dict, file: Path, precision: str) -> Teacher:
    stored = state["config"]["student"]["model"]
    if model and model != stored:
        raise UserError(f"teacher.model {model!r} differs from the architecture run checkpoint {file} was trained "
                        f"with ({stored!r}): leave teacher.model empty to use the stored one")
    built = trained_student(state, file)
    identity = {"source": "checkpoint", "model": stored, "pretrained": "", "path": os.path.abspath(file),
                "weights_sha256": file_sha256(file)}
    return Teacher(built.model, tokenizer=built.tokenizer, image_spec=built.image_spec, embed_dim=built.embed_dim,
                   identity=identity, precision=precision, model_cfg=built.model_cfg)


def _from_hf(path: str, precision: str, preprocess: dict | None = None) -> Teacher:
    from clipdistill.models.hf import load_hf_clip  # keeps transformers optional
    from clipdistill.models.preprocess import check_override, with_fields

    if not path:
        raise UserError("teacher.source=hf needs teacher.path (a Hugging Face model directory)")
    if not os.path.isdir(path):
        raise UserError(f"Hugging Face model directory not found: {path}")
    hf = load_hf_clip(path)
    identity = {"source": "hf", "model": "", "pretrained": "", "path": os.path.abspath(path),
                "weights_sha256": hf.weights_sha256}
    spec = hf.image_spec
    if preprocess:
        spec = with_fields(spec, check_override(preprocess, "teacher.preprocess"))
        identity["preprocess"] = dict(preprocess)
    return Teacher(hf.encoder, tokenizer=hf.tokenizer, image_spec=spec,
                   embed_dim=hf.encoder.embed_dim, identity=identity, precision=precision)
