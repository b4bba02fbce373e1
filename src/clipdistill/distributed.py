"""Process-group set-up under torchrun, and gathering embeddings across ranks.

The objective gathers once per step: the student's embeddings *with* gradient (each rank's slice
receives the gradient that every rank's copy of the loss sends it), the teacher's without. With the
loss computed on the gathered global batch, DDP's gradient averaging then yields exactly the gradient
of one process on the concatenated batch (tested with 2 gloo processes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clipdistill.embeddings import Embeddings


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def local_world_size() -> int:
    """Processes torchrun started on this node (1 for a plain process)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment (a no-op for a plain process).

    NCCL on GPUs, gloo on CPU. ``device="auto"`` picks this rank's GPU when there is one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(rank, world_size, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the *sum* over ranks of the gradient of its slice.

    (``torch.distributed.nn.functional.all_gather`` does the same and is deprecated.) An all_reduce of
    the whole gathered gradient, then this rank's slice: works on gloo and NCCL alike.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        ctx.rows = t.shape[0]
        return _gather_no_grad(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def _gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(t)


def _gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def gather_embeddings(emb: Embeddings, with_grad: bool) -> Embeddings:
    """Concatenate every rank's batch in rank order (identity on one process)."""
    if not is_distributed():
        return emb
    gather = _gather_with_grad if with_grad else _gather_no_grad
    # Extras that carry a gradient (mfd's masked image view) are gathered like the embeddings.
    extras = {k: (gather if v.requires_grad else _gather_no_grad)(v) for k, v in emb.extras.items()}
    return emb.with_(image=gather(emb.image), text=gather(emb.text), extras=extras)


def local_rows(batch_size: int) -> slice:
    """The rows this rank contributed to a gathered batch (ranks concatenate in order, equal sizes)."""
    rank = dist.get_rank() if is_distributed() else 0
    return slice(rank * batch_size, (rank + 1) * batch_size)


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """For logging: the mean of a detached scalar over ranks."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def sum_across_ranks(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum of small integer counts over ranks: one all-reduce (``values`` unchanged on one process).

    ``device`` is this rank's device (NCCL reduces CUDA tensors only); every rank must pass the same length.
    """
    if not is_distributed():
        return list(values)
    summed = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def all_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` on one process."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# --- Tensors split across ranks (cid_cluster's class centres, PartialFC-style): each rank holds its own
# rows, so DDP must neither broadcast nor average them, and what the loss needs of the other ranks'
# rows goes through the reductions below.

def rank_shard_names(module: torch.nn.Module) -> list[str]:
    """Qualified names of the parameters and buffers that hold a different shard on each rank.

    A submodule declares its own in a ``rank_shards`` tuple of attribute names (None entries skipped).
    """
    names = []
    for prefix, sub in module.named_modules():
        for attr in getattr(sub, "rank_shards", ()):
            if getattr(sub, attr, None) is not None:
                names.append(f"{prefix}.{attr}" if prefix else attr)
    return names


def max_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (no gradient: a softmax's shift only)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class _SumKeepLocalGrad(torch.autograd.Function):
    """all_reduce(SUM) whose gradient goes to this rank's own term only: every rank back-propagates into
    its own term, so no gradient crosses ranks here."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sum_across_ranks_local_grad(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks of ``t``; d(sum)/d(t) = 1 on each rank (identity on one process)."""
    return _SumKeepLocalGrad.apply(t) if is_distributed() else t


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def gradient_times_world_size(t: torch.Tensor) -> torch.Tensor:
    """Identity whose backward multiplies by W (identity on one process).

    For a loss split across ranks (each rank holds part of its terms, not a copy of all of them): the
    gathered batch's gradient is summed over ranks by the gather, then averaged by DDP, so each part
    must weigh W times to come out once (PartialFC's AllGather does the same: ``grad_out *= world_size``).
    """
    return _ScaleGrad.apply(t, float(world_size())) if is_distributed() else t


def argmax_across_ranks(values: torch.Tensor, offset: int) -> torch.Tensor:
    """Per row, the global column of the largest value when each rank holds the columns from ``offset``.

    Ties go to the lowest global column, as ``argmax`` on the whole row does.
    """
    column = values.argmax(dim=1)  # the first of equal maxima
    best = values.gather(1, column[:, None])[:, 0]
    column = column + offset
    if not is_distributed():
        return column
    bests, columns = _gather_no_grad(best[None]), _gather_no_grad(column[None])  # (W, N), rank order
    return columns.gather(0, bests.argmax(dim=0, keepdim=True))[0]
