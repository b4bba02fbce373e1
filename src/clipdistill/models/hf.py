"""A Hugging Face CLIP-family directory as a teacher, behind open_clip's encoder interface.

The adaptor gives a ``transformers`` model the things :class:`~clipdistill.models.teacher.Teacher`
uses from an open_clip model: ``encode_image(x, normalize)``, ``encode_text(tokens, normalize)``, the
*log* ``logit_scale`` parameter and ``logit_bias`` (sigmoid families). Tokenizer and image statistics
come from the directory's own files, because a teacher must see text and pixels exactly as it was
trained to. Families (``model_type`` in ``config.json``):

==============  ==========================  ====================  ===============================  ==========
model_type      text pooling                padding / context     image                            logit_bias
==============  ==========================  ====================  ===============================  ==========
``clip``        first EOS token (causal)    max_length, 77        shortest side + center crop      no
``metaclip_2``  first EOS token (causal)    max_length, 77        shortest side + center crop      no
``siglip``      last position (no mask)     max_length, 64        squash to image_size             yes
``siglip2``     last position (no mask)     max_length, 64        squash, as patches (NaFlex)      yes
==============  ==========================  ====================  ===============================  ==========

SigLIP's text tower pools the *last* position and was trained on max_length-padded text without an
attention mask (big_vision; open_clip does the same), so captions are always padded to the full
context and no mask is passed. ``siglip2`` (NaFlex) takes patch sequences: a square image of
``patch_size * sqrt(max_num_patches)`` pixels is cut into patches in the image processor's order.

``transformers`` is an optional extra (``pip install clipdistill[hf]``) and imported only here, lazily.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.errors import UserError
from clipdistill.models.checkpoints import file_sha256
from clipdistill.models.spec import ImageSpec

# PIL resampling codes as stored in preprocessor_config.json ("resample": 3 is bicubic).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_WEIGHTS_SUFFIXES = {".safetensors", ".bin"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
SUPPORTED = ("clip", "metaclip_2", "siglip", "siglip2")
_SIGMOID = ("siglip", "siglip2")


class HFClipEncoder(nn.Module):
    """A transformers CLIP / MetaCLIP 2 / SigLIP / SigLIP 2 model with open_clip's encoder interface."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model
        self.model_type = clip_model.config.model_type

    @property
    def logit_scale(self) -> nn.Parameter:
        """The log-scale, like open_clip's ``model.logit_scale`` (``exp`` gives the multiplier)."""
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """SigLIP's additive bias (``sigmoid(scale * sim + bias)``), None for softmax families."""
        return self.clip.logit_bias if self.model_type in _SIGMOID else None

    @property
    def embed_dim(self) -> int:
        config = self.clip.config
        if self.model_type in _SIGMOID:
            return int(config.text_config.projection_size)  # the image head keeps the hidden size, equal to it
        return int(config.projection_dim)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.model_type == "siglip2":
            features = _pooled(self.clip.get_image_features(**naflex_inputs(pixel_values, self.patch_size)))
        else:
            features = _pooled(self.clip.get_image_features(pixel_values=pixel_values))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # No attention mask: CLIP's causal text tower pools at the first EOS, so padding after it cannot
        # change the result; SigLIP pools the last position and was trained without one.
        features = _pooled(self.clip.get_text_features(input_ids=input_ids))
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def patch_size(self) -> int:
        return int(self.clip.config.vision_config.patch_size)


def naflex_inputs(pixel_values: torch.Tensor, patch_size: int) -> dict:
    """``(B, 3, H, W)`` images as SigLIP 2 NaFlex inputs: patches (B, N, P*P*3), mask, spatial shapes.

    Patch order and channel-last layout are ``Siglip2ImageProcessor.convert_image_to_patches``'s.
    """
    b, c, h, w = pixel_values.shape
    rows, cols = h // patch_size, w // patch_size
    patches = pixel_values.reshape(b, c, rows, patch_size, cols, patch_size).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, rows * cols, patch_size * patch_size * c)
    return {"pixel_values": patches,
            "pixel_attention_mask": torch.ones(b, rows * cols, dtype=torch.long, device=pixel_values.device),
            "spatial_shapes": torch.tensor([[rows, cols]] * b, dtype=torch.long, device=pixel_values.device)}


def _pooled(output) -> torch.Tensor:
    # transformers 4 returns the projected features; transformers 5 returns a ModelOutput whose
    # pooler_output holds them.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFTokenizer:
    """``list[str] -> LongTensor (B, context_length)`` with a Hugging Face tokenizer, padded to full length."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding="max_length", max_length=self.context_length,
                                 truncation=True, return_tensors="pt")
        return encoded["input_ids"]


@dataclass
class HFClip:
    """What a Hugging Face CLIP directory provides to a teacher."""

    encoder: HFClipEncoder
    tokenizer: HFTokenizer
    image_spec: ImageSpec
    weights_sha256: str


def load_hf_clip(path: str | Path) -> HFClip:
    """Load a local directory (``save_pretrained`` output plus tokenizer and image processor) of a
    supported family (:data:`SUPPORTED`)."""
    path = Path(path)
    transformers = _import_transformers()
    model_type = _check_model_type(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    # Everything cheap first, so a missing file is reported before the weights are read.
    image_spec = _image_spec(path, model_type, config)
    tokenizer = HFTokenizer(_load_tokenizer(transformers, path), int(config.text_config.max_position_embeddings))
    model = transformers.AutoModel.from_pretrained(str(path)).float().eval()
    return HFClip(encoder=HFClipEncoder(model), tokenizer=tokenizer, image_spec=image_spec,
                  weights_sha256=weights_sha256(path))


def _load_tokenizer(transformers, path: Path):
    # Without vocabulary files transformers quietly builds a 3-token CLIPTokenizer: refuse instead.
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"no tokenizer in {path} (none of {', '.join(_TOKENIZER_FILES)}): save the model's "
                        f"tokenizer (or processor) next to it with save_pretrained")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"no usable tokenizer in {path} (save it with tokenizer.save_pretrained): {reason}") from None


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("teacher.source=hf needs transformers: pip install clipdistill[hf]") from None
    return transformers


def _check_model_type(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"not a Hugging Face model directory (no config.json): {path}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in SUPPORTED:
        raise UserError(f"{path} holds a '{model_type}' model; teacher.source=hf supports model types "
                        f"{', '.join(SUPPORTED)} (or convert it to open_clip and use local-dir:DIR)")
    return model_type


def _image_spec(path: Path, model_type: str, config) -> ImageSpec:
    """Size from the model (what its position embeddings accept), statistics and resize from the image processor."""
    processor_file = path / "preprocessor_config.json"
    if not processor_file.is_file():
        raise UserError(f"no preprocessor_config.json in {path}: save the model's image processor (or processor) "
                        f"next to it so the teacher gets its own image normalization")
    cfg = json.loads(processor_file.read_text())
    try:
        mean, std = tuple(float(m) for m in cfg["image_mean"]), tuple(float(s) for s in cfg["image_std"])
    except KeyError as err:
        raise UserError(f"{processor_file} lacks {err.args[0]}") from None
    interpolation = _PIL_RESAMPLE.get(cfg.get("resample", 3), "bicubic")
    if model_type == "siglip2":  # NaFlex: no fixed size; the square that fills max_num_patches
        patch = int(config.vision_config.patch_size)
        size = patch * math.isqrt(int(cfg.get("max_num_patches", 256)))
    else:
        size = int(config.vision_config.image_size)
    return ImageSpec(size=size, mean=mean, std=std, interpolation=interpolation, resize_mode=_resize_mode(cfg))


def _resize_mode(cfg: dict) -> str:
    # CLIP's processor resizes the shortest edge then center-crops; SigLIP's resizes to height x width.
    if cfg.get("do_center_crop") and "shortest_edge" in (cfg.get("size") or {}):
        return "shortest"
    return "squash"


def weights_sha256(path: str | Path) -> str:
    """One hash over every weights file of the directory (sharded checkpoints included)."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix in _WEIGHTS_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no weights (*.safetensors or *.bin) in {path}")
    if len(files) == 1:
        return file_sha256(files[0])
    combined = hashlib.sha256()
    for file in files:
        combined.update(f"{file.name}:{file_sha256(file)}\n".encode())
    return combined.hexdigest()
