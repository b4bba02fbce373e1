"""Activation-based importance: rank units by what they contribute on a calibration batch.

The teacher runs once on a batch of the training data with hooks on its blocks; each score is a mean over
every sample and token (text padding included) of:

- residual channel d: ``|x_d|`` at the input of each kept block and at the tower's output, summed;
- head h: ``||out_proj.weight[:, h] @ o_h||``, the norm of what the head adds to the residual stream
  (its attention output recomputed from the block's ``ln_1`` input, with the block's mask);
- MLP channel j: ``|a_j| * ||c_proj.weight[:, j]||``, the norm of what the channel adds;
- embedding dim e: ``|ê_e|`` of the L2-normalised image and text embeddings, summed.

The shapes are those of :func:`~.selection.magnitude_scores`, so the selection step is the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdistill.inherit.selection import TowerScores
from clipdistill.inherit.towers import Tower


class _TowerRecorder:
    """Accumulates one tower's activation statistics through forward hooks."""

    def __init__(self, tower: Tower, kept_layers: list[int]):
        self.tower, self.kept = tower, set(kept_layers)
        self.batch_first = getattr(tower.module.transformer, "batch_first", True)
        self.width = torch.zeros(tower.width)
        self.heads = [torch.zeros(tower.heads) for _ in range(tower.layers)]
        self.mlp = [torch.zeros(tower.mlp_width) for _ in range(tower.layers)]
        self.handles = []

    def attach(self) -> "_TowerRecorder":
        for index, block in enumerate(self.tower.blocks):
            self.handles.append(block.register_forward_pre_hook(self._block_hook(index), with_kwargs=True))
            self.handles.append(block.mlp.c_proj.register_forward_pre_hook(self._mlp_hook(index)))
        self.handles.append(self.tower.module.transformer.register_forward_hook(self._output_hook))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.batch_first else x.transpose(0, 1)  # (B, N, W)

    def _block_hook(self, index: int):
        def hook(block, args, kwargs):
            x = self._tokens(args[0]).float()
            if index in self.kept:
                self.width += x.abs().mean((0, 1))
            self.heads[index] += _head_contributions(block, block.ln_1(x), kwargs.get("attn_mask"), self.tower)
        return hook

    def _mlp_hook(self, index: int):
        def hook(c_proj, args):
            activations = args[0].float().abs().reshape(-1, args[0].shape[-1]).mean(0)
            self.mlp[index] += activations * c_proj.weight.float().norm(dim=0)
        return hook

    def _output_hook(self, module, args, output):
        output = output[0] if isinstance(output, tuple) else output
        self.width += output.float().abs().mean((0, 1))  # (B, N, W): the transformer restores the layout

    def scores(self) -> TowerScores:
        return TowerScores(width=self.width, heads=self.heads, mlp=self.mlp)


def _head_contributions(block, y: torch.Tensor, attn_mask, tower: Tower) -> torch.Tensor:
    """Mean norm of each head's write into the residual stream, (H,)."""
    attn = block.attn
    batch, tokens, _ = y.shape
    q, k, v = F.linear(y, attn.in_proj_weight.float(), attn.in_proj_bias.float()).chunk(3, dim=-1)
    split = lambda t: t.reshape(batch, tokens, tower.heads, tower.head_dim).transpose(1, 2)  # noqa: E731
    mask = attn_mask.float() if attn_mask is not None else None
    heads_out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)  # (B, H, N, hd)
    out_weight = attn.out_proj.weight.float().reshape(-1, tower.heads, tower.head_dim)         # (W, H, hd)
    # One head at a time: all heads at once would hold a (B, H, N, W) tensor.
    return torch.stack([(heads_out[:, h] @ out_weight[:, h].T).norm(dim=-1).mean() for h in range(tower.heads)])


def activation_scores(teacher, towers: tuple[Tower, Tower], kept: dict, calibration) -> tuple[dict, torch.Tensor]:
    """({"image": TowerScores, "text": TowerScores}, embed-dim scores) from one teacher pass over ``calibration``."""
    recorders = {tower.name: _TowerRecorder(tower, kept[tower.name]).attach() for tower in towers}
    try:
        with torch.no_grad():
            image = F.normalize(teacher.encode_image(calibration.images).float(), dim=-1)
            text = F.normalize(teacher.encode_text(calibration.tokens).float(), dim=-1)
    finally:
        for recorder in recorders.values():
            recorder.detach()
    embed = image.abs().mean(0) + text.abs().mean(0)
    return {name: recorder.scores() for name, recorder in recorders.items()}, embed
