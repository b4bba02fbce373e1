"""Two gloo processes with the batch split must equal one process on the whole batch."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from toys import CASES, N, make_inputs, make_model

def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, tokens, teacher = make_inputs()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    local_teacher = teacher.with_(image=teacher.image[rows], text=teacher.text[rows])
    results = {}
    for local_loss in (False, True):
        for case, specs in CASES.items():
            model = DistributedDataParallel(make_model(specs, local_loss), find_unused_parameters=True)
            total, terms = model(images[rows], tokens[rows], local_teacher)
            total.backward()
            # In local_loss mode each rank holds its share: the logged value is the mean over ranks.
            total = total.detach().clone()
            dist.all_reduce(total)
            results[(case, local_loss)] = {"total": total / world, "grads": grads(model.module)}
    # Heads initialized differently on each rank (the reference code's bug) are synchronized by DDP.
    head = DistributedDataParallel(make_model(CASES["clipkd"], seed=rank)).module.objective.terms["fd"].project.image.weight
    copies = [torch.empty_like(head) for _ in range(world)]
    dist.all_gather(copies, head.detach())
    results["heads_identical"] = all(torch.equal(copies[0], c) for c in copies)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp / "pg"), str(out)), nprocs=2, join=True)
    return torch.load(out)


def test_heads_start_identical_on_every_rank(two_rank_results):
    assert two_rank_results["heads_identical"]


@pytest.mark.parametrize("local_loss", [False, True], ids=["global", "local_loss"])
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(two_rank_results, case, local_loss):
    images, tokens, teacher = make_inputs()
    single = make_model(CASES[case])
    total, _ = single(images, tokens, teacher)
    total.backward()
    expected = grads(single)
    got = two_rank_results[(case, local_loss)]
    assert got["total"].item() == pytest.approx(total.item(), abs=1e-5)
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-5), (name, (got["grads"][name] - grad).abs().max())
