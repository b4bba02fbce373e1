"""Two gloo processes with the batch split must equal one process on the whole batch."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipdistill import Embeddings
from clipdistill.losses.objective import build_objective
from clipdistill.train.step import Distiller

N, D_IN, D_S, D_T = 8, 12, 6, 10
LOSSES = {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}, "crd": {"weight": 1.0, "temperature": 2.0},
          "icl": {"weight": 1.0}}


class ToyStudent(nn.Module):
    """Just enough of an open_clip model: two linear towers and a logit scale."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(D_IN, D_S)
        self.textual = nn.Linear(D_IN, D_S)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x, normalize=False):
        return self.visual(x)

    def encode_text(self, x, normalize=False):
        return self.textual(x)


def make_inputs():
    g = torch.Generator().manual_seed(123)
    images, tokens = torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g)
    teacher = Embeddings(F.normalize(torch.randn(N, D_T, generator=g), dim=-1),
                         F.normalize(torch.randn(N, D_T, generator=g), dim=-1), torch.tensor(50.0), normalized=True)
    return images, tokens, teacher


def make_model():
    torch.manual_seed(0)
    return Distiller(ToyStudent(), build_objective(LOSSES, student_dim=D_S, teacher_dim=D_T))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, tokens, teacher = make_inputs()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    local_teacher = teacher.with_(image=teacher.image[rows], text=teacher.text[rows])
    model = DistributedDataParallel(make_model())
    total, terms = model(images[rows], tokens[rows], local_teacher)
    total.backward()
    if rank == 0:
        torch.save({"total": total.detach(), "terms": terms, "grads": grads(model.module)}, out_file)
    dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    images, tokens, teacher = make_inputs()
    single = make_model()
    total, terms = single(images, tokens, teacher)
    total.backward()
    expected = grads(single)

    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got["total"].item() == pytest.approx(total.item(), abs=1e-5)
    for name in terms:
        assert got["terms"][name].item() == pytest.approx(terms[name].item(), abs=1e-5), name
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-5), name
