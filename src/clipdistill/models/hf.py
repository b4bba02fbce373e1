"""A Hugging Face ``CLIPModel`` directory as a teacher, behind open_clip's encoder interface.

The adaptor gives a ``transformers`` CLIP the three things :class:`~clipdistill.models.teacher.Teacher`
uses from an open_clip model: ``encode_image(x, normalize)``, ``encode_text(tokens, normalize)`` and
the *log* ``logit_scale`` parameter. Tokenizer and image statistics come from the directory's own
files, because a teacher must see text and pixels exactly as it was trained to.

``transformers`` is an optional extra (``pip install clipdistill[hf]``) and imported only here, lazily.
"""
from __future__ import annotations

import hashlib
import json
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
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class HFClipEncoder(nn.Module):
    """``transformers.CLIPModel`` with open_clip's ``encode_image`` / ``encode_text`` / ``logit_scale``."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    @property
    def logit_scale(self) -> nn.Parameter:
        """The log-scale, like open_clip's ``model.logit_scale`` (``exp`` gives the multiplier)."""
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _pooled(self.clip.get_image_features(pixel_values=pixel_values))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # No attention mask needed: CLIP's text tower is causal and pools at the first EOS, so the
        # padding after it cannot change the result.
        features = _pooled(self.clip.get_text_features(input_ids=input_ids))
        return F.normalize(features, dim=-1) if normalize else features


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
    """Load a local ``CLIPModel`` directory (``save_pretrained`` output plus tokenizer and image processor)."""
    path = Path(path)
    transformers = _import_transformers()
    _check_is_clip_dir(path)
    config = transformers.CLIPConfig.from_pretrained(str(path))
    # Everything cheap first, so a missing file is reported before the weights are read.
    image_spec = _image_spec(path, int(config.vision_config.image_size))
    tokenizer = HFTokenizer(_load_tokenizer(transformers, path), int(config.text_config.max_position_embeddings))
    model = transformers.CLIPModel.from_pretrained(str(path)).float().eval()
    return HFClip(encoder=HFClipEncoder(model), tokenizer=tokenizer, image_spec=image_spec,
                  weights_sha256=weights_sha256(path))


def _load_tokenizer(transformers, path: Path):
    # Without vocabulary files transformers quietly builds a 3-token CLIPTokenizer: refuse instead.
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"no tokenizer in {path} (none of {', '.join(_TOKENIZER_FILES)}): save the "
                        f"CLIPTokenizer (or CLIPProcessor) next to the model")
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


def _check_is_clip_dir(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"not a Hugging Face model directory (no config.json): {path}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clip":
        raise UserError(f"{path} holds a '{model_type}' model; teacher.source=hf supports CLIPModel ('clip') only")


def _image_spec(path: Path, image_size: int) -> ImageSpec:
    """Size from the model (what its position embeddings accept), statistics from the image processor."""
    processor_file = path / "preprocessor_config.json"
    if not processor_file.is_file():
        raise UserError(f"no preprocessor_config.json in {path}: save the CLIPImageProcessor (or CLIPProcessor) "
                        f"next to the model so the teacher gets its own image normalization")
    cfg = json.loads(processor_file.read_text())
    try:
        mean, std = tuple(float(m) for m in cfg["image_mean"]), tuple(float(s) for s in cfg["image_std"])
    except KeyError as err:
        raise UserError(f"{processor_file} lacks {err.args[0]}") from None
    interpolation = _PIL_RESAMPLE.get(cfg.get("resample", 3), "bicubic")
    return ImageSpec(size=image_size, mean=mean, std=std, interpolation=interpolation)


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
