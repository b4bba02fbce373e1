"""A learnable logit scale, owned by the loss that multiplies its cosines with it (or shared, see heads.py)."""
from __future__ import annotations

import math

import torch
from torch import nn

from clipdistill.errors import UserError

SCALE_PARAMS = ("exp", "raw")


class LearnableScale(nn.Module):
    """κ > 0 multiplying cosine logits, learned; ``forward()`` returns it as a 0-d tensor.

    Two parametrisations (``param``):

    - ``exp``: κ = exp(p), p initialised to log(init_scale): CLIP's and open_clip's own logit scale.
      The state_dict key ends in ``log_scale``.
    - ``raw``: κ = p, initialised to init_scale: how the CLIP-KD reference uses its cross-model scales
      (winycg/CLIP-KD, src/open_clip/loss.py @ e151019, ``KDClipLoss.__init__``:
      ``self.cross_logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))`` and likewise
      ``fusion_logit_scale``; ``forward`` multiplies ``self.cross_logit_scale * ...`` as it is, never
      ``.exp()``, so κ starts at ln(1/0.07) = 2.659, temperature 0.376). The key ends in ``scale``.
      A step moves κ itself, not its logarithm, so the two also learn at different speeds.

    ``clamp_()`` keeps κ ≤ max_scale (raw also κ ≥ 0: a negative scale would turn every similarity
    around), in place, after every optimizer step and at init; never in the forward, where a clamp
    would zero the gradient above the cap and let the parameter drift (as open_clip clamps the
    student's logit scale). The reference clamps neither.
    """

    def __init__(self, init_scale: float = 1 / 0.07, param: str = "exp", max_scale: float = 100.0):
        super().__init__()
        if param not in SCALE_PARAMS:
            raise UserError(f"scale_param must be one of {', '.join(SCALE_PARAMS)}, got {param!r}")
        if not init_scale > 0:
            raise UserError(f"init_scale must be > 0, got {init_scale}")
        self.kind, self.init_scale, self.max_scale = param, float(init_scale), float(max_scale)
        start = math.log(init_scale) if param == "exp" else float(init_scale)
        self.register_parameter(self._key, nn.Parameter(torch.tensor(start)))
        self.clamp_()  # an init above the cap starts at the cap

    @property
    def _key(self) -> str:
        return "log_scale" if self.kind == "exp" else "scale"

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer moves: log κ (``exp``) or κ (``raw``)."""
        return getattr(self, self._key)

    @property
    def settings(self) -> tuple[str, float, float]:
        """(param, init_scale, max_scale): what two terms sharing one scale must agree on."""
        return self.kind, self.init_scale, self.max_scale

    def forward(self) -> torch.Tensor:
        return self.param.exp() if self.kind == "exp" else self.param

    @torch.no_grad()
    def clamp_(self) -> None:
        """κ ≤ max_scale (raw: also κ ≥ 0), in place."""
        if self.kind == "exp":
            self.param.clamp_(max=math.log(self.max_scale))
        else:
            self.param.clamp_(min=0.0, max=self.max_scale)

    def extra_repr(self) -> str:
        return f"param={self.kind}, init_scale={self.init_scale:.4g}, max_scale={self.max_scale:g}"
