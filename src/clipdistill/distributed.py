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
