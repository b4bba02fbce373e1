"""mfd: masked feature distillation (CLIP-KD, Yang et al. CVPR 2024, Sec. 3.2)."""
from __future__ import annotations

from clipdistill.losses.fd import FDLoss
from clipdistill.losses.registry import register


@register("mfd")
class MFDLoss(FDLoss):
    """FD where the student's image tower sees only a random ``1 − mask_ratio`` of its patches.

    loss = mean_i ‖ŝ_v^mask,i − t_v,i‖² + ‖ŝ_t,i − t_t,i‖²

    The masking happens in the student's forward, not here: a loss that declares
    ``student_patch_dropout`` makes the trainer give the student open_clip's patch dropout at that
    ratio (``Student.drop_patches``; active in training mode only), while the teacher sees the full image. Every term of
    the objective then sees the masked image features, as in FLIP — cheaper, not only different.
    The reference code computes the masked features and then overwrites them with a plain forward,
    so its MFD is plain FD. Requires a ViT student (a clear error otherwise).

    Args:
        mask_ratio: fraction of patches dropped (CLIP-KD: 0.75). Others as in ``fd``.
    """

    needs_teacher = True

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None,
                 always_project: bool = False, mask_ratio: float = 0.75):
        super().__init__(student_dim, teacher_dim, always_project)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mfd mask_ratio must be in (0, 1), got {mask_ratio}")
        self.student_patch_dropout = mask_ratio
