"""The student: any open_clip architecture, with its tokenizer and its image preprocessing.

``build_student`` takes a clipdistill preset (``tiny``), any name of ``open_clip.list_models()``
(``ViT-B-16``, ``RN50`` ...), an inline open_clip config dict, or an open_clip model folder
(``local-dir:DIR``) or hub repo (``hf-hub:org/name``), so a custom student needs no code.
Construction is open_clip's ``create_model``; this module only resolves names, loads weights files
safely, resolves the preprocessing those weights expect (:mod:`clipdistill.models.preprocess`) and
collects what the rest of the package needs next to the ``nn.Module``.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import open_clip
import torch
from torch import nn

from clipdistill.errors import UserError
from clipdistill.models import folders, towers
from clipdistill.models.checkpoints import load_state_dict_file, load_weights
from clipdistill.models.guards import check_activation
from clipdistill.models.preprocess import check_override, folder_preprocess, resolve_for_file, tag_preprocess, with_fields
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
        image_spec: input size, mean, std, interpolation and resize mode its weights expect.
        model_cfg: the resolved open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``), so a
            trained student can be exported as an open_clip model.
        name: the open_clip architecture name (a preset name, ``inline-<hash>`` for a dict, or the
            ``local-dir:``/``hf-hub:`` name).
        weights_file: the file its weights came from ("" for random init or a downloaded tag).
        build_record: set when the architecture is more than the config's ``student.model`` says (a tower
            reused from the teacher, :mod:`clipdistill.models.towers`): what a run checkpoint stores to
            rebuild it without the teacher. None otherwise.
    """

    model: nn.Module
    tokenizer: Tokenizer
    image_spec: ImageSpec
    model_cfg: dict
    name: str
    weights_file: str = ""
    build_record: dict | None = None

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


def build_student(model: str | dict, pretrained: str = "", patch_dropout: float | None = None, *, tag: str = "",
                  preprocess: dict | None = None, setting: str = "student.preprocess") -> Student:
    """Build an open_clip model by preset name, open_clip name, inline config dict or model folder.

    Args:
        model: ``"tiny"``, ``"ViT-B-16"``, ``{"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}``,
            ``"local-dir:DIR"`` or ``"hf-hub:org/name"`` (config, weights and tokenizer of the folder).
        pretrained: ``""`` for random initialization (the usual start for distillation), an open_clip
            pretrained tag (downloaded by open_clip), or a local weights file in any format
            :func:`~clipdistill.models.checkpoints.load_state_dict_file` reads.
        patch_dropout: fraction of image patches open_clip drops in training mode (masked feature
            distillation, FLIP); ViT image towers only.
        tag: the open_clip pretrained tag a weights file in ``pretrained`` is: weights from the file,
            identity (preprocessing, activation) from the tag.
        preprocess: explicit preprocessing fields (``mean``, ``std``, ``interpolation``,
            ``resize_mode``) that win over what is resolved; ``setting`` is its config key (for errors).
    """
    if folders.is_folder_name(model):
        if pretrained or tag:  # open_clip would ignore it silently
            raise UserError(f"{model} holds its own weights: leave pretrained empty (got '{pretrained or tag}')")
        return _from_folder(model, patch_dropout, preprocess, setting)
    name = resolve_architecture(model)
    model_cfg = open_clip.get_model_config(name)
    if patch_dropout is not None:
        _require_open_clip_vit(name, model_cfg)  # before building (or downloading) anything
    is_file = bool(pretrained) and _looks_like_file(pretrained)
    if tag and not is_file:
        raise UserError(f"tag '{tag}' names what a weights file is, but no weights file was given for {name}")
    identity_tag = tag if is_file else pretrained
    if identity_tag:  # before any download: a wrong activation or tag is known from open_clip's table
        check_activation(name, model_cfg, identity_tag)
    # Decided before gigabytes of weights are read: an undecidable file stops at once.
    fields = image_spec_fields(name, pretrained, tag=tag, preprocess=preprocess, setting=setting)
    module = _create(name, pretrained)
    spec = with_fields(image_spec_of(module), fields)
    student = Student(model=module, tokenizer=_tokenizer(name), image_spec=spec, model_cfg=model_cfg, name=name,
                      weights_file=os.path.abspath(pretrained) if is_file else "")
    if patch_dropout is not None:
        student.drop_patches(patch_dropout)
    return student


@contextmanager
def patches_dropped(model: nn.Module, ratio: float):
    """Inside, ``model``'s image tower drops a random ``ratio`` of its patches (training mode only).

    open_clip's own ``PatchDropout``, put in place of the tower's for the forwards inside and taken
    out after: mfd ``masked=feature_only`` embeds each batch once whole and once masked. It holds no
    parameters, so swapping it changes nothing the optimizer or DDP see.
    """
    from open_clip.transformer import PatchDropout

    visual = model.visual
    kept = visual.patch_dropout
    visual.patch_dropout = PatchDropout(float(ratio)).train(visual.training)
    try:
        yield
    finally:
        visual.patch_dropout = kept


def require_patch_dropout(model: nn.Module) -> None:
    """One line unless ``model`` is an open_clip ViT (whose image tower has a patch-dropout slot)."""
    if not hasattr(getattr(model, "visual", None), "patch_dropout"):
        raise UserError(f"patch dropout (loss 'mfd' drops image patches) needs a ViT student: an open_clip ViT "
                        f"image tower; this student's is {type(getattr(model, 'visual', None)).__name__}")


def add_logit_bias(model: nn.Module, init: float = -10.0) -> None:
    """Give ``model`` a learnable logit bias (sigmoid losses), unless it already has one.

    It lives in open_clip's own ``logit_bias`` attribute, a 0-d Parameter as open_clip's
    ``init_logit_bias`` creates it (SigLIP: −10), so the student's state_dict carries it.
    """
    if getattr(model, "logit_bias", None) is None:
        model.logit_bias = nn.Parameter(torch.tensor(float(init)))


def image_spec_fields(name: str, pretrained: str = "", *, tag: str = "", preprocess: dict | None = None,
                      setting: str = "student.preprocess") -> dict:
    """The preprocessing fields ``build_student`` gives weights ``pretrained`` of architecture ``name``.

    Needs no weights: a trained student is rebuilt with the preprocessing it was trained with from its
    run config alone (random init: only the override; a tag: its table entry; a file: as resolved).
    """
    if pretrained and _looks_like_file(pretrained):
        return resolve_for_file(name, tag=tag, override=preprocess, setting=setting)
    if pretrained:
        return {**tag_preprocess(name, pretrained), **check_override(preprocess, setting)}
    return check_override(preprocess, setting)


def student_of_config(student_cfg: dict) -> Student:
    """A run's student architecture with the preprocessing it was trained with (weights: random init)."""
    model, preprocess = student_cfg["model"], student_cfg.get("preprocess") or None
    if folders.is_folder_name(model):
        return build_student(model, preprocess=preprocess)
    fields = image_spec_fields(resolve_architecture(model), student_cfg.get("pretrained", ""), preprocess=preprocess)
    return build_student(model, preprocess=fields)


def trained_student(state: dict, source) -> Student:
    """The student of a clipdistill run checkpoint (``state``, from ``source``) with its trained weights.

    A student trained with a sigmoid loss carries a logit bias: it gets the parameter back, and its
    ``model_cfg`` says ``init_logit_bias`` so that an exported open_clip model has one too.
    """
    record = state.get("student_build")  # a student with a tower of its teacher: its own architecture
    student = towers.rebuild(record) if record else student_of_config(state["config"]["student"])
    if "logit_bias" in state["student"]:
        add_logit_bias(student.model)
        student.model_cfg["init_logit_bias"] = float(state["student"]["logit_bias"])
    load_weights(student.model, state["student"], source)
    return student


def _from_folder(name: str, patch_dropout: float | None, preprocess: dict | None, setting: str) -> Student:
    """An open_clip model folder: its config, its weights (through our strict loader), its tokenizer."""
    config = folders.read_config(name)
    model_cfg = dict(config["model_cfg"])
    if patch_dropout is not None:
        _require_open_clip_vit(name, model_cfg)
    fields = folder_preprocess(config.get("preprocess_cfg"), name, preprocess, setting)
    tokenizer = folders.tokenizer(name, model_cfg)  # cheap checks first, then gigabytes of weights
    weights = folders.weights_file(name)
    module = _random_init(name, load_weights=False)
    load_weights(module, load_state_dict_file(weights), weights)
    student = Student(model=module, tokenizer=tokenizer, image_spec=with_fields(image_spec_of(module), fields),
                      model_cfg=model_cfg, name=name, weights_file=os.path.abspath(weights))
    if patch_dropout is not None:
        student.drop_patches(patch_dropout)
    return student


def image_spec_of(model: nn.Module) -> ImageSpec:
    """The ImageSpec open_clip attached to ``model`` (its preprocess cfg)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise UserError(f"non-square model input {tuple(size)} is not supported (image size must be square)")
        size = size[0]
    return ImageSpec(size=int(size), mean=tuple(float(m) for m in cfg["mean"]),
                     std=tuple(float(s) for s in cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"),
                     resize_mode=cfg.get("resize_mode", "shortest"))


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


def _random_init(name: str, load_weights: bool = True) -> nn.Module:
    # pretrained_text=False: open_clip would otherwise download a Hugging Face text tower for
    # hf-text architectures, which a random-init student does not want (and offline cannot get).
    # load_weights=False: a local-dir: folder's weights are loaded by our strict loader instead.
    quiet = _QuietRandomInit()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, pretrained_text=False, load_weights=load_weights)
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
                        f"teacher.path=FILE teacher.pretrained={tag}: the tag keeps its preprocessing)") from None


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
