"""The one type that crosses every boundary: a batch of paired image/text embeddings."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Embeddings:
    """A batch of paired embeddings from one CLIP model.

    Attributes:
        image: ``(B, D)`` image embeddings.
        text: ``(B, D)`` text embeddings; row ``i`` is the caption of image ``i``.
        logit_scale: the *multiplicative* scale ``exp(log_scale)`` as open_clip's forward returns it
            (a 0-d or 1-element tensor), not the log.
        logit_bias: the additive bias of a sigmoid-trained model (SigLIP: ``sigmoid(scale * sim + bias)``),
            ``None`` for softmax-trained models.
        extras: optional named tensors (e.g. ``"cluster"`` pseudo-labels ``(B,)``).

    Convention (checked nowhere, relied on everywhere): a **student** hands over *raw* embeddings,
    exactly what ``encode_image(x, normalize=False)`` returns, because losses that project the
    student into the teacher's space must see them before normalization. A **teacher** hands over
    *L2-normalized* embeddings. ``normalized`` records which one this is.

    ``local_rows`` is set by the objective in ``local_loss`` mode: the rows of the gathered global
    batch that this rank owns. Losses then compute their rows only (local anchors against global
    candidates), so logit memory grows linearly with the global batch. ``None`` means all rows.
    """

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    normalized: bool = False
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    local_rows: slice | None = None
    logit_bias: torch.Tensor | None = None
    # unit()'s results: each normalization is ops and backward nodes, and several terms ask for the same one.
    _units: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.text.ndim != 2:
            raise ValueError(f"embeddings must be (B, D); got image {tuple(self.image.shape)}, "
                             f"text {tuple(self.text.shape)}")
        if self.image.shape[0] != self.text.shape[0]:
            raise ValueError(f"image and text batch sizes differ: {self.image.shape[0]} vs {self.text.shape[0]}")

    @property
    def rows(self) -> slice:
        """The anchor rows this process computes (all of them unless in local_loss mode)."""
        return self.local_rows if self.local_rows is not None else slice(None)

    def unit(self, tower: str) -> torch.Tensor:
        """``image`` or ``text`` (``tower``) L2-normalized along D: what the clip loss, crd, siglip... compare.

        Computed once per object (and grad mode, so a no-grad use first never hands a later term a tensor
        without gradient) and shared by every term that asks. A teacher's, normalized already, as it is.
        """
        embeddings = getattr(self, tower)
        if self.normalized:
            return embeddings
        key = (tower, torch.is_grad_enabled())
        if key not in self._units:
            self._units[key] = F.normalize(embeddings, dim=-1)
        return self._units[key]

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    @property
    def dim(self) -> int:
        return self.image.shape[1]

    def with_(self, **changes) -> "Embeddings":
        """A copy with some fields replaced."""
        return replace(self, **changes)
