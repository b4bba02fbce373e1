"""Projection of student embeddings into the teacher's space, owned by the loss that needs it (or shared)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError


class TeacherSpaceProjection(nn.Module):
    """ŝ = norm(P(s)) for each tower, with one linear map per tower.

    CLIP-KD learns a head only when the student's and teacher's dimensions differ; ``always=True``
    learns one even when they agree. Without dimensions (``student_dim=None``) there is no head and the
    dimensions must agree at call time.

    Args:
        student_dim, teacher_dim: embedding widths D_s, D_t.
        always: learn a head even when D_s == D_t.
    """

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, always: bool = False):
        super().__init__()
        self.image = self.text = None
        if student_dim is not None and teacher_dim is not None and (always or student_dim != teacher_dim):
            self.image = nn.Linear(student_dim, teacher_dim)
            self.text = nn.Linear(student_dim, teacher_dim)

    def forward(self, student: Embeddings, teacher: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns normalized projected (image, text), each (N, D_t)."""
        image, text = student.image, student.text
        if self.image is not None:
            # Caption-free data: text is (N, 0) on both sides and stays so (fd's text half is then 0).
            image, text = self.image(image), self.text(text) if text.shape[1] else text
        elif student.dim != teacher.dim:
            raise ValueError(f"student dim {student.dim} != teacher dim {teacher.dim}: build the loss with "
                             "student_dim= and teacher_dim= so it learns a projection head")
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


HEADS = ("per_loss", "shared")


def share_heads(terms: dict[str, nn.Module]) -> None:
    """``train.heads=shared``: one projection head, and one cross scale, for every term that has one.

    The CLIP-KD reference learns one head pair (winycg/CLIP-KD, src/open_clip/loss.py @ e151019,
    ``KDClipLoss.__init__`` L≈233-235: ``self.visual_proj``, ``self.text_proj``) that FD, ICL,
    cross-KD, GD and AFD all project through, and one ``cross_logit_scale`` (L≈244) that ICL and
    cross-KD both multiply (L≈298-299). Here, in place: the first term's (in ``losses:`` order)
    ``project`` becomes every term's ``project``, and the first ``cross_scale`` (icl, cross_kd,
    cid_instance) every term's ``cross_scale``. AFD's fusion scale stays its own, as the reference's
    ``fusion_logit_scale``. The module is one object, so the optimizer, DDP and the gradient sum see
    one parameter set; the state_dict lists it under each term's key (loading writes it once per key,
    the same values). Terms built with different heads (``always_project``) or scale settings
    cannot share: one line says which.
    """
    _share(terms, "project", lambda head: None if head.image is None else tuple(head.image.weight.shape))
    _share(terms, "cross_scale", lambda scale: scale.settings)


def _share(terms: dict[str, nn.Module], attribute: str, settings) -> None:
    holders = [(name, loss) for name, loss in terms.items() if isinstance(getattr(loss, attribute, None), nn.Module)]
    if not holders:
        return
    first_name, first = holders[0]
    shared = getattr(first, attribute)
    for name, loss in holders[1:]:
        if settings(getattr(loss, attribute)) != settings(shared):
            raise UserError(f"train.heads=shared: '{name}' and '{first_name}' cannot share one {attribute} "
                            f"({settings(getattr(loss, attribute))} vs {settings(shared)}); give them the same "
                            "always_project / init_scale / scale_param / max_scale, or use train.heads=per_loss")
        setattr(loss, attribute, shared)
