"""One optimization step, and the module DDP wraps."""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from clipdistill import distributed
from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.mfd import MASKED_IMAGE
from clipdistill.models.student import add_logit_bias, patches_dropped, require_patch_dropout
from clipdistill.train.optim import set_lr

log = logging.getLogger("clipdistill.train")


class Distiller(nn.Module):
    """The student and the objective in one module.

    DDP must wrap both: the objective owns learnable parts (projection heads, ICL's scale) whose
    gradients need averaging across ranks like the student's. The teacher stays outside.
    """

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.objective = objective
        # Tensors that hold another shard on each rank (cid_cluster's centres): DDP must neither broadcast
        # nor average them; each rank's gradient for its shard is already its whole gradient.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, distributed.rank_shard_names(self))
        if getattr(objective, "student_logit_bias", None) is not None:  # a sigmoid task loss (siglip)
            add_logit_bias(student, objective.student_logit_bias)
        self.masked_view = getattr(objective, "student_masked_view", 0.0)  # mfd masked=feature_only
        if self.masked_view:
            require_patch_dropout(student)

    def embed(self, images: torch.Tensor, tokens: torch.Tensor | None) -> Embeddings:
        """The student's raw embeddings (what every loss receives); ``tokens`` None (caption-free data):
        text is ``(B, 0)``, which only image-only losses accept.

        With a masked view (mfd ``masked=feature_only``) the image tower runs a second time with
        patch dropout, after the full forwards (so both passes of gradient accumulation draw the same
        masks); its embeddings go to ``extras["masked_image"]``. Out of training mode patch dropout
        is off and the masked view is the full one, so it is not computed twice.
        """
        image = self.student.encode_image(images, normalize=False)
        text = self.student.encode_text(tokens, normalize=False) if tokens is not None else image[:, :0]
        extras = {}
        if self.masked_view:
            extras[MASKED_IMAGE] = self._masked_image(images) if self.training else image
        return Embeddings(image=image, text=text, logit_scale=self.student.logit_scale.exp(),
                          logit_bias=getattr(self.student, "logit_bias", None), extras=extras)

    def _masked_image(self, images: torch.Tensor) -> torch.Tensor:
        with patches_dropped(self.student, self.masked_view):
            return self.student.encode_image(images, normalize=False)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, teacher: Embeddings | None,
                context: Embeddings | None = None, rows: slice | None = None):
        """Objective on the student's embeddings of this batch.

        With gradient accumulation, ``context`` holds (no-grad) embeddings of the whole accumulated
        batch and ``rows`` says where this micro-batch's live embeddings go, so contrastive terms see
        every candidate of the big batch (open_clip's accum_freq scheme).
        """
        student = self.embed(images, tokens)
        if context is not None:
            student = context.with_(image=_splice(context.image, student.image, rows),
                                    text=_splice(context.text, student.text, rows),
                                    extras={k: _splice(context.extras[k], v, rows) for k, v in student.extras.items()},
                                    logit_scale=student.logit_scale, logit_bias=student.logit_bias)
        return self.objective(student, teacher)


def _splice(full: torch.Tensor, part: torch.Tensor, rows: slice) -> torch.Tensor:
    return torch.cat([full[: rows.start], part, full[rows.stop:]], dim=0)


def _concatenated(parts: list[Embeddings]) -> Embeddings:
    """Micro-batches' embeddings (and their per-row extras) as one batch, in order."""
    return parts[0].with_(image=torch.cat([p.image for p in parts]), text=torch.cat([p.text for p in parts]),
                          extras={k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras})


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the step is not applied and no checkpoint is written."""


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked (or ``auto``); full fp32 on CPU."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _unwrap(model: nn.Module) -> Distiller:
    return model.module if hasattr(model, "module") else model


def _all_finite(total: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank: all ranks must raise (or skip) together, or the
    ranks that go on would wait forever in backward's all-reduce (a per-sample term like fd can be
    non-finite on one rank only)."""
    finite = torch.isfinite(total.detach()).float()
    if distributed.is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _check_finite(total: torch.Tensor, terms: dict, step: int) -> None:
    if not _all_finite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)] or ["total"]
        raise NonFiniteLoss(f"non-finite loss at step {step} in term(s) {', '.join(bad)}; "
                            "the last checkpoint is kept — lower optim.lr or check the data")


class NonFiniteSkips:
    """``train.skip_nonfinite``: up to ``limit`` steps with a non-finite loss are skipped, not fatal.

    A skipped step uses up its batch and its step number (the lr is a function of the step number),
    but applies no update: weights and optimizer moments stay as they were. ``skipped``
    counts over the whole run (it is saved in checkpoints), so a resume does not reset the limit.
    """

    def __init__(self, limit: int, skipped: int = 0):
        self.limit, self.skipped = limit, skipped

    def skip(self, err: NonFiniteLoss) -> None:
        """Count and log the skipped step, or re-raise once ``limit`` steps have been skipped."""
        if self.skipped >= self.limit:
            if self.limit:
                raise NonFiniteLoss(f"{err} (after skipping {self.skipped}: train.skip_nonfinite={self.limit})")
            raise err
        self.skipped += 1
        log.warning("%s", str(err).split(";")[0] + f"; step skipped ({self.skipped} of at most {self.limit})")


def accumulate_gradients(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                         teacher: Embeddings | None, *, accum_steps: int, device: torch.device, precision: str,
                         step: int) -> tuple[torch.Tensor, dict]:
    """Backward of the objective on the whole batch, ``accum_steps`` micro-batches at a time.

    Exact for every term: a no-grad pass embeds the whole batch; then each micro-batch is embedded
    again with grad and spliced into those embeddings, so each backward sends the full-batch loss's
    gradient through that micro-batch only. Parameters the loss touches directly (heads, scales)
    receive the full gradient at every micro-step, so theirs is divided by ``accum_steps``. A student
    whose forward draws random numbers (patch dropout for mfd, dropout) draws the same in both passes:
    each micro-batch's live pass replays the RNG state its no-grad pass started from.
    """
    if accum_steps == 1:
        with autocast(device, precision):
            total, terms = model(images, tokens, teacher)
        _check_finite(total, terms, step)
        total.backward()
        return total.detach(), terms
    distiller = _unwrap(model)
    image_chunks = images.chunk(accum_steps)
    token_chunks = tokens.chunk(accum_steps) if tokens is not None else [None] * len(image_chunks)
    context, rng_states = [], []
    with torch.no_grad(), autocast(device, precision):
        for i, t in zip(image_chunks, token_chunks):
            rng_states.append(_rng_state(device))
            context.append(distiller.embed(i, t))
    after_context = _rng_state(device)
    context = _concatenated(context)
    start = 0
    for j, (i, t) in enumerate(zip(image_chunks, token_chunks)):
        rows = slice(start, start + i.shape[0])
        start = rows.stop
        sync = j == accum_steps - 1 or not hasattr(model, "no_sync")
        _set_rng_state(device, rng_states[j])  # the same patch masks as this micro-batch's no-grad pass
        with (nullcontext() if sync else model.no_sync()), autocast(device, precision):
            total, terms = model(i, t, teacher, context=context, rows=rows)
        _check_finite(total, terms, step)
        total.backward()
    _set_rng_state(device, after_context)
    bias = getattr(distiller.student, "logit_bias", None)
    for p in [*distiller.objective.parameters(), distiller.student.logit_scale, *([bias] if bias is not None else [])]:
        if p.grad is not None:
            p.grad /= accum_steps
    return total.detach(), terms


def _rng_state(device: torch.device):
    # The CPU generator too on a GPU: open_clip's PatchDropout draws its masks with torch.randn on the CPU.
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def train_step(model: nn.Module, batch: dict, teacher_embeddings: Embeddings | None, *, optimizer, lr: float,
               device: torch.device, precision: str, grad_clip: float, step: int,
               accum_steps: int = 1) -> tuple[torch.Tensor, dict]:
    """Forward, backward (accumulated over micro-batches if asked), clip, update at learning rate ``lr``.

    Returns (total loss, {term: value}).
    """
    images = batch["student_image"].to(device, non_blocking=True)
    tokens = batch["student_text"].to(device, non_blocking=True) if "student_text" in batch else None  # caption-free
    optimizer.zero_grad(set_to_none=True)
    total, terms = accumulate_gradients(model, images, tokens, teacher_embeddings, accum_steps=accum_steps,
                                        device=device, precision=precision, step=step)
    if grad_clip > 0:
        clip_grad_norm_across_ranks(optimizer, grad_clip)
    set_lr(optimizer, lr)
    optimizer.step()
    _clamp_logit_scale(model)
    _unwrap(model).objective.clamp_scales_()  # the losses' learnable scales, likewise in place
    return total.detach(), terms


def clip_grad_norm_across_ranks(optimizer, max_norm: float) -> None:
    """``clip_grad_norm_`` over the optimizer's parameters, the norm taken over the whole model.

    Replicated parameters carry the same (DDP-averaged) gradient on every rank, but rank shards
    (the optimizer's ``rank_shard`` group) carry each rank's own rows: their squared norms are summed
    over ranks, so every rank scales by the same factor and replicas stay identical.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shards = [p.grad for group in optimizer.param_groups if group.get("rank_shard")
              for p in group["params"] if p.grad is not None]
    if not shards or not distributed.is_distributed():
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    replicated = [p.grad for group in optimizer.param_groups if not group.get("rank_shard")
                  for p in group["params"] if p.grad is not None]
    shard_square = distributed.sum_across_ranks_local_grad(torch.nn.utils.get_total_norm(shards) ** 2)
    total = (torch.nn.utils.get_total_norm(replicated) ** 2 + shard_square).sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


def _clamp_logit_scale(model: nn.Module) -> None:
    # open_clip clamps the student's temperature after each step: τ_s ≤ 100.
    with torch.no_grad():
        _unwrap(model).student.logit_scale.clamp_(0, math.log(100))
