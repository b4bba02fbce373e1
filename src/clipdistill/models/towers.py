"""A student that reuses one of its teacher's towers (``student.text_tower: teacher`` / ``image_tower: teacher``).

The result is one ordinary open_clip model: its config is the student's for the tower it trains and the
teacher's for the tower it reuses, with the teacher's ``embed_dim``, so the trained tower's projection
maps straight into the teacher's embedding space (LiT-style: a locked tower, the other one trained
against it). The reused tower holds the teacher's weights and is frozen: no gradient, always in eval
mode, so neither the optimizer (which takes trainable parameters only) nor DDP's gradient sync sees it.
Because it is one open_clip model, ``clipdistill export`` writes it complete (student image tower +
teacher text tower), and open_clip loads it with no clipdistill installed.

Which parameters are whose follows open_clip's layout: ``visual.*`` is the image tower; everything
else but the shared ``logit_scale``/``logit_bias`` is the text tower (``text.*`` of a CustomTextCLIP,
``transformer``/``token_embedding``/``positional_embedding``/``ln_final``/``text_projection`` of a CLIP).
"""
from __future__ import annotations

import copy
import logging
import types

from torch import nn

from clipdistill.errors import UserError

log = logging.getLogger("clipdistill.models")

TOWERS = ("image", "text")
CHOICES = ("student", "teacher")
_SHARED = ("logit_scale", "logit_bias")


def tower_of(name: str) -> str | None:
    """``image``, ``text`` or None (shared scales) for a state_dict key or child module name of an open_clip model."""
    if name.split(".")[0] in _SHARED:
        return None
    return "image" if name.split(".")[0] == "visual" else "text"


def reused_tower(text_tower: str = "student", image_tower: str = "student") -> str | None:
    """Which tower the student takes from its teacher (``image``, ``text``) or None; refuses what cannot be."""
    for key, value in (("text_tower", text_tower), ("image_tower", image_tower)):
        if value not in CHOICES:
            raise UserError(f"student.{key} must be student or teacher, got {value!r}")
    if text_tower == image_tower == "teacher":
        raise UserError("student.text_tower and student.image_tower are both 'teacher': nothing would be trained "
                        "(reuse one tower and distil the other)")
    return "text" if text_tower == "teacher" else "image" if image_tower == "teacher" else None


def hybrid_config(student_cfg: dict, teacher_cfg: dict, reused: str) -> dict:
    """The open_clip config of a model with the student's trained tower and the teacher's ``reused`` tower.

    The teacher's ``embed_dim`` (the trained tower projects into its space) and activation (``quick_gelu``
    applies to the whole model; the frozen tower must keep the one it was trained with). The top-level
    keys that choose the text model class (``custom_text``...) come from whoever owns the text tower.
    """
    text_owner = teacher_cfg if reused == "text" else student_cfg
    config = copy.deepcopy(text_owner)
    config["vision_cfg"] = copy.deepcopy((teacher_cfg if reused == "image" else student_cfg)["vision_cfg"])
    config["embed_dim"] = teacher_cfg["embed_dim"]
    config.pop("quick_gelu", None)
    if teacher_cfg.get("quick_gelu"):
        config["quick_gelu"] = True
    return config


def combine_weights(hybrid: nn.Module, student: nn.Module, teacher: nn.Module, reused: str) -> dict:
    """The hybrid's state_dict: the reused tower and the scales from the teacher, the trained tower from the
    student where shapes fit (a student projection to another embed dim stays freshly initialised)."""
    own, from_teacher, from_student = hybrid.state_dict(), teacher.state_dict(), student.state_dict()
    combined, fresh = {}, []
    for key, value in own.items():
        tower = tower_of(key)
        if tower == reused or tower is None:
            source = from_teacher.get(key)
            if source is None and tower is not None:
                raise UserError(f"the teacher has no '{key}' for the {reused} tower the student reuses (a "
                                f"teacher of another model family?)")
            combined[key] = value if source is None else source.detach().reshape(value.shape).clone()
        elif key in from_student and from_student[key].shape == value.shape:
            combined[key] = from_student[key].detach().clone()
        else:
            combined[key] = value
            fresh.append(key)
    if fresh:
        log.info("student keys initialised fresh for the teacher's embedding space: %s", ", ".join(fresh))
    return combined


def freeze_tower(model: nn.Module, tower: str) -> None:
    """No gradient and eval mode for every parameter and module of ``tower``, for good.

    ``train()`` on the whole model (the training loop, the evaluator) cannot switch it back: each frozen
    child answers ``train(mode)`` with ``train(False)``, as the teacher does.
    """
    for name, parameter in model.named_parameters():
        if tower_of(name) == tower:
            parameter.requires_grad_(False)
    for name, child in model.named_children():
        if tower_of(name) == tower:
            child.train(False)
            child.train = types.MethodType(_stay_in_eval, child)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def check_teacher(teacher, reused: str) -> None:
    """Refuse a teacher whose tower cannot become part of an open_clip student."""
    if getattr(teacher, "model_cfg", None) is None:
        raise UserError(f"student.{reused}_tower=teacher needs an open_clip teacher (teacher.source openclip or "
                        f"checkpoint, or a cache of one): a Hugging Face teacher's tower is not an open_clip module")


def student_with_teacher_tower(student, teacher, reused: str):
    """``student`` (a :class:`~clipdistill.models.Student`) rebuilt around ``teacher``'s ``reused`` tower.

    Returns a new Student whose model is the hybrid open_clip model, its reused tower frozen; its
    ``build_record`` lets a checkpoint rebuild the architecture without the teacher.
    """
    from clipdistill.models.student import Student, build_student

    check_teacher(teacher, reused)
    _refuse_activation_change(student, teacher, reused)
    config = hybrid_config(student.model_cfg, teacher.model_cfg, reused)
    spec = teacher.image_spec if reused == "image" else student.image_spec
    preprocess = {"mean": list(spec.mean), "std": list(spec.std), "interpolation": spec.interpolation,
                  "resize_mode": spec.resize_mode}
    built = build_student(config, preprocess=preprocess)
    weights = combine_weights(built.model, student.model, teacher.encoder, reused)
    built.model.load_state_dict(weights, strict=True)
    freeze_tower(built.model, reused)
    _refuse_other_tokenizer(built.tokenizer, teacher.tokenizer if reused == "text" else student.tokenizer, reused)
    return Student(model=built.model, tokenizer=built.tokenizer, image_spec=built.image_spec, model_cfg=config,
                   name=built.name, weights_file=student.weights_file,
                   build_record={"model_cfg": config, "preprocess": preprocess, "reused_tower": reused})


def _refuse_activation_change(student, teacher, reused: str) -> None:
    # quick_gelu is one switch for both towers: a student tower with weights trained under the other
    # activation would silently compute something else.
    if bool(student.model_cfg.get("quick_gelu")) != bool(teacher.model_cfg.get("quick_gelu")) and student.weights_file:
        trained = "image" if reused == "text" else "text"
        raise UserError(f"the student's {trained} tower weights ({student.weights_file}) use "
                        f"{'QuickGELU' if student.model_cfg.get('quick_gelu') else 'GELU'} but the teacher's tower "
                        f"the other one: one open_clip model has one activation; start the student from weights "
                        f"of the teacher's activation or from random init")


def _refuse_other_tokenizer(rebuilt, original, reused: str) -> None:
    """The exported model tokenizes as open_clip does for its text config: refuse a text tower whose own
    tokenizer (a model folder's tokenizer files, say) is provably another, or its embeddings would be of
    other tokens than the ones it was trained or used with."""
    from open_clip.tokenizer import SimpleTokenizer

    from clipdistill.models.student import same_tokenizer

    both_simple = isinstance(rebuilt, SimpleTokenizer) and isinstance(original, SimpleTokenizer)
    if type(rebuilt) is not type(original) or (both_simple and not same_tokenizer(rebuilt, original)):
        owner = "teacher" if reused == "text" else "student"
        raise UserError(f"the {owner}'s text tower comes with its own tokenizer ({type(original).__name__}), not the "
                        f"one open_clip builds for its text config ({type(rebuilt).__name__}, context "
                        f"{getattr(rebuilt, 'context_length', '?')}): an exported model would tokenize differently")


def rebuild(record: dict):
    """A student of the architecture ``build_record`` describes (random weights; a checkpoint fills them)."""
    from clipdistill.models.student import build_student

    built = build_student(record["model_cfg"], preprocess=record.get("preprocess") or None)
    freeze_tower(built.model, record["reused_tower"])
    built.build_record = dict(record)
    return built


__all__ = ["TOWERS", "combine_weights", "freeze_tower", "hybrid_config", "rebuild", "reused_tower",
           "student_with_teacher_tower", "tower_of"]
