"""The student: any open_clip architecture, with its tokenizer and its image preprocessing.

``build_student`` takes a clipdistill preset (``tiny``), any name of ``open_clip.list_models()``
(``ViT-B-16``, ``RN50`` ...) or an inline open_clip config dict, so a custom student needs no code.
Construction is open_clip's ``create_model``; this module only resolves names, loads weights files
safely and collects what the rest of the package needs next to the ``nn.Module``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import open_clip
import torch
from torch import nn

from clipdistill.errors import UserError
from clipdistill.models.checkpoints import load_state_dict_file, load_weights
from clipdistill.models.presets import resolve_architecture
from clipdistill.models.spec import ImageSpec

Tokenizer = Callable[[list[str]], torch.Tensor]
_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class Student:
    """An open_clip model and everything needed to feed it.

    Attributes:
        model: the open_clip ``nn.Module`` (CLIP / CustomTextCLIP). Training calls
            ``model.encode_image(x, normalize=False)`` for the raw embeddings losses expect.
        tokenizer: ``list[str] -> LongTensor (B, context_length)``, open_clip's tokenizer for the model.
        image_spec: input size, mean, std and interpolation from the model's preprocess config.
        model_cfg: the resolved open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``), so a
            trained student can be exported as an open_clip model.
        name: the open_clip architecture name (a preset name, or ``inline-<hash>`` for a dict).
    """

    model: nn.Module
    tokenizer: Tokenizer
    image_spec: ImageSpec
    model_cfg: dict
    name: str

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    def drop_patches(self, ratio: float) -> None:
        """Train the image tower on a random ``1 - ratio`` of its patches; evaluation sees all of them.

        open_clip's own ``PatchDropout`` (what its ``force_patch_dropout`` builds), recorded in
        ``model_cfg`` so an export keeps the setting. Masked feature distillation (``mfd``) asks for it.
        """
        _require_open_clip_vit(self.name, self.model_cfg)
        from open_clip.transformer import PatchDropout

        self.model_cfg["vision_cfg"]["patch_dropout"] = float(ratio)
        self.model.visual.patch_dropout = PatchDropout(float(ratio))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings (for evaluation; gradients flow if enabled)."""
        return self.model.encode_image(images, normalize=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalized text embeddings (for evaluation; gradients flow if enabled)."""
        return self.model.encode_text(tokens, normalize=True)


def build_student(model: str | dict, pretrained: str = "", patch_dropout: float | None = None) -> Student:
    """Build an open_clip model by preset name, open_clip name or inline config dict.

    Args:
        model: ``"tiny"``, ``"ViT-B-16"``, ``{"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}``.
        pretrained: ``""`` for random initialization (the usual start for distillation), an open_clip
            pretrained tag (downloaded by open_clip), or a local weights file in any format
            :func:`~clipdistill.models.checkpoints.load_state_dict_file` reads.
        patch_dropout: fraction of image patches open_clip drops in training mode (masked feature
            distillation, FLIP); ViT image towers only.
    """
    name = resolve_architecture(model)
    model_cfg = open_clip.get_model_config(name)
    if patch_dropout is not None:
        _require_open_clip_vit(name, model_cfg)  # before building (or downloading) anything
    module = _create(name, pretrained)
    student = Student(model=module, tokenizer=_tokenizer(name), image_spec=image_spec_of(module),
                      model_cfg=model_cfg, name=name)
    if patch_dropout is not None:
        student.drop_patches(patch_dropout)
    return student


def add_logit_bias(model: nn.Module, init: float = -10.0) -> None:
    """Give ``model`` a learnable logit bias (sigmoid losses), unless it already has one.

    It lives in open_clip's own ``logit_bias`` attribute, a 0-d Parameter as open_clip's
    ``init_logit_bias`` creates it (SigLIP: −10), so the student's state_dict carries it.
    """
    if getattr(model, "logit_bias", None) is None:
        model.logit_bias = nn.Parameter(torch.tensor(float(init)))


def image_spec_of(model: nn.Module) -> ImageSpec:
    """The ImageSpec open_clip attached to ``model`` (its preprocess cfg)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise UserError(f"non-square model input {tuple(size)} is not supported (image size must be square)")
        size = size[0]
    return ImageSpec(size=int(size), mean=tuple(float(m) for m in cfg["mean"]),
                     std=tuple(float(s) for s in cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"))


def _create(name: str, pretrained: str) -> nn.Module:
    if not pretrained:
        return _random_init(name)
    if _looks_like_file(pretrained):
        # Our loader, not open_clip's: it also reads {"model": ...} wrappers and module. prefixes on
        # every key, and turns unsafe pickles and mismatches into one-line errors.
        state_dict = load_state_dict_file(pretrained)
        module = _random_init(name)
        load_weights(module, state_dict, pretrained)
        return module
    _fetch_pretrained_tag(name, pretrained)
    return open_clip.create_model(name, pretrained=pretrained)


class _QuietRandomInit(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning.

    Random init is what a distillation student wants, and a teacher built this way gets its weights
    loaded right after: the warning would only mislead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _random_init(name: str) -> nn.Module:
    # pretrained_text=False: open_clip would otherwise download a Hugging Face text tower for
    # hf-text architectures, which a random-init student does not want (and offline cannot get).
    quiet = _QuietRandomInit()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, pretrained_text=False)
    finally:
        logging.getLogger().removeFilter(quiet)


def _looks_like_file(pretrained: str) -> bool:
    # Tags are bare words (laion400m_e32); anything path-like is a file, so a typo in a path reads
    # "file not found" rather than "unknown tag".
    return os.path.exists(pretrained) or os.sep in pretrained or pretrained.endswith(_WEIGHTS_SUFFIXES)


def _fetch_pretrained_tag(name: str, tag: str) -> None:
    """Download the weights of an open_clip tag up front so that failure is a clear UserError.

    open_clip's ``create_model`` then finds them in its cache.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"'{tag}' is not an open_clip pretrained tag of {name} nor a weights file "
                        f"(tags: {', '.join(tags) or 'none'})")
    try:
        open_clip.download_pretrained(cfg)
    except Exception as err:  # network, hub or cache errors alike: the user's fix is the same
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"could not fetch open_clip weights {name}/{tag} ({reason}); offline? download the "
                        f"file elsewhere and give its local path instead (e.g. teacher.source=checkpoint "
                        f"teacher.path=FILE)") from None


def _require_open_clip_vit(name: str, model_cfg: dict) -> None:
    vision = model_cfg["vision_cfg"]
    if not isinstance(vision.get("layers", 12), int) or vision.get("timm_model_name"):
        raise UserError(f"patch dropout (loss 'mfd' drops image patches) needs a ViT student: an open_clip ViT "
                        f"image tower; {name} has none")


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether ``a`` and ``b`` provably give every caption the same tokens, so a batch can be
    tokenized once for both (a teacher and its student usually share open_clip's BPE tokenizer).

    Conservative: besides the same object, only two open_clip ``SimpleTokenizer`` built alike (same
    vocabulary, merges, special tokens, context length and cleaning, no token reduction) count.
    """
    if a is b:
        return True
    if type(a) is not open_clip.tokenizer.SimpleTokenizer or type(b) is not open_clip.tokenizer.SimpleTokenizer:
        return False
    return (a.context_length == b.context_length and a.clean_fn is b.clean_fn
            and a.reduction_fn is None and b.reduction_fn is None and a.pat.pattern == b.pat.pattern
            and a.encoder == b.encoder and a.bpe_ranks == b.bpe_ranks)


def _tokenizer(name: str) -> Tokenizer:
    try:
        return open_clip.get_tokenizer(name)
    except Exception as err:  # HF-tokenizer models download their vocabulary
        raise UserError(f"could not load the tokenizer of {name}: {err}") from None
