"""Two gloo processes with the batch split must equal one process on the whole batch; the training
loop judges data.max_bad_fraction on the counts summed over ranks."""
import json
import os
import re
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clipdistill.data.bad_samples import KINDS
from toys import (CASES, ENSEMBLE_CASES, N, SHARED_CASES, make_ensemble_inputs, make_ensemble_model, make_inputs,
                  make_model)

def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def whole_grads(model):
    """``grads``, with each rank shard's (cid_cluster's centres) put back together from every rank's rows."""
    from clipdistill.distributed import all_objects, rank_shard_names

    shards = set(rank_shard_names(model))
    return {n: torch.cat(all_objects(g)) if n in shards else g for n, g in grads(model).items()}


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, tokens, teacher = make_inputs()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    local_teacher = teacher.with_(image=teacher.image[rows], text=teacher.text[rows])
    results = {}
    for local_loss in (False, True):
        for case, heads in [*((case, "per_loss") for case in CASES), *((case, "shared") for case in SHARED_CASES)]:
            model = DistributedDataParallel(make_model(CASES[case], local_loss, heads=heads),
                                            find_unused_parameters=True)
            total, terms = model(images[rows], tokens[rows], local_teacher)
            total.backward()
            # In local_loss mode each rank holds its share: the logged value is the mean over ranks.
            total = total.detach().clone()
            dist.all_reduce(total)
            results[(case, heads, local_loss)] = {"total": total / world, "grads": whole_grads(model.module)}
    # Two teachers of different widths (each its own heads): the same equivalence, in the same processes.
    images, tokens, ensemble = make_ensemble_inputs()
    local_ensemble = ensemble.map(lambda m: m.with_(image=m.image[rows], text=m.text[rows]))
    for local_loss in (False, True):
        for case, specs in ENSEMBLE_CASES.items():
            model = DistributedDataParallel(make_ensemble_model(specs, local_loss), find_unused_parameters=True)
            total, _ = model(images[rows], tokens[rows], local_ensemble)
            total.backward()
            total = total.detach().clone()
            dist.all_reduce(total)
            results[("ensemble", case, local_loss)] = {"total": total / world, "grads": whole_grads(model.module)}
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
@pytest.mark.parametrize("case, heads", [*((case, "per_loss") for case in CASES),
                                         *((case, "shared") for case in SHARED_CASES)])
def test_two_ranks_equal_one_process(two_rank_results, case, heads, local_loss):
    images, tokens, teacher = make_inputs()
    single = make_model(CASES[case], heads=heads)
    total, _ = single(images, tokens, teacher)
    total.backward()
    expected = grads(single)
    got = two_rank_results[(case, heads, local_loss)]
    assert got["total"].item() == pytest.approx(total.item(), abs=1e-5)
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-5), (name, (got["grads"][name] - grad).abs().max())


@pytest.mark.parametrize("local_loss", [False, True], ids=["global", "local_loss"])
@pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
def test_two_teachers_on_two_ranks_equal_one_process(two_rank_results, case, local_loss):
    images, tokens, ensemble = make_ensemble_inputs()
    single = make_ensemble_model(ENSEMBLE_CASES[case])
    total, _ = single(images, tokens, ensemble)
    total.backward()
    expected = grads(single)
    got = two_rank_results[("ensemble", case, local_loss)]
    assert got["total"].item() == pytest.approx(total.item(), abs=1e-5)
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-5), (name, (got["grads"][name] - grad).abs().max())


@pytest.mark.parametrize("local_loss", [False, True], ids=["global", "local_loss"])
def test_siglip_on_two_ranks_equals_open_clip_on_the_whole_batch(two_rank_results, local_loss):
    import open_clip
    import torch.nn.functional as F

    images, tokens, _ = make_inputs()
    with torch.no_grad():
        whole = make_model(CASES["siglip"]).embed(images, tokens)
        expected = open_clip.loss.SigLipLoss()(F.normalize(whole.image, dim=-1), F.normalize(whole.text, dim=-1),
                                               whole.logit_scale, whole.logit_bias)
    assert two_rank_results[("siglip", "per_loss", local_loss)]["total"].item() == pytest.approx(expected.item(), abs=1e-5)


# --- data.max_bad_fraction under DDP: the real training loop on 2 gloo ranks, where only rank 1 skips samples.

BATCH, RANK1_BAD = 16, 8  # per step: 32 good samples over both ranks, 8 skipped on rank 1 (20%; rank 1 alone: 33%)


def _train_worker(rank, world, init_file, out_dir, overrides, report_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    # A rank left waiting in a collective fails after a minute instead of hanging the test.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    from clipdistill import config as config_lib
    from clipdistill.errors import UserError
    from clipdistill.train import loop

    real_batches = loop.train_batches

    class Rank1SkipsSamples:  # as if RANK1_BAD unreadable files preceded each batch of rank 1
        def __init__(self, *args, **kwargs):
            self.batches = real_batches(*args, **kwargs)

        def __next__(self):
            batch = next(self.batches)
            if rank == 1:
                batch["bad"] = Counter(batch["bad"]) + Counter({"corrupt_image": RANK1_BAD})
            return batch

        def state(self):
            return self.batches.state()

    rank1_skips_samples = Rank1SkipsSamples

    loop.train_batches = rank1_skips_samples
    cfg = config_lib.load(None, ["student.model=tiny", "data.num_samples=64", "data.workers=0",
                                 f"train.batch_size={BATCH}", "train.steps=8", "train.save_every=2",
                                 "train.keep_checkpoints=4", "train.progress=false", "eval.retrieval=",
                                 "eval.zero_shot=", *overrides])
    try:
        outcome = {"bad_samples": loop.run(cfg, out_dir)["bad_samples"]}
    except UserError as err:
        outcome = {"error": str(err)}
    finally:
        dist.destroy_process_group()
    (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))


def _train_two_ranks(tmp, name, *overrides) -> list[dict]:
    """Both ranks' outcome: the run's bad_samples, or the UserError it stopped with."""
    report = tmp / name
    report.mkdir()
    context = mp.spawn(_train_worker, args=(2, str(report / "pg"), str(tmp / "run"), list(overrides), str(report)),
                       nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish together (one waiting in a collective?)")
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]


def test_bad_data_limit_uses_counts_summed_over_ranks_and_resume_keeps_them(tmp_path):
    from clipdistill.train import checkpoint

    # Past the limit: both ranks stop at the same step with the same message naming the global counts.
    # The first judgement is at step 5 (5 x 40 = 200 samples attempted); rank 1 alone has seen 120 by then.
    stopped = _train_two_ranks(tmp_path, "limit", "data.max_bad_fraction=0.1")
    assert stopped[0] == stopped[1], stopped
    assert stopped[0]["error"].startswith("40 of 200 samples unreadable (summed over 2 ranks) "
                                          "(20.0% > data.max_bad_fraction=0.1): {'corrupt_image': 40}; ")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(checkpoints)] == ["step_00000002.pt", "step_00000004.pt"]
    # The checkpoint holds the run's totals over ranks (rank 0 alone saw none).
    assert checkpoint.load(checkpoints / "step_00000004.pt")["bad_data"] == {"counts": {"corrupt_image": 32},
                                                                              "good": 4 * 2 * BATCH}

    # Below the limit (20% < 25%, though rank 1 alone is at 33%): the resumed run completes on both ranks and
    # reports the sum over ranks, restored totals counted once.
    done = _train_two_ranks(tmp_path, "resumed", "data.max_bad_fraction=0.25", "train.resume=latest")
    assert done[0] == done[1] == {"bad_samples": {"corrupt_image": 8 * RANK1_BAD}}, done
    assert json.loads((tmp_path / "run" / "results.json").read_text())["bad_samples"] == {"corrupt_image": 64}
    assert checkpoint.load(checkpoints / "step_00000008.pt")["bad_data"] == {"counts": {"corrupt_image": 64},
                                                                              "good": 8 * 2 * BATCH}


def test_every_bad_sample_kind_in_the_source_is_summed_by_name():
    """Ranks sum counts in the fixed order of KINDS; a new kind not listed there would be reported as 'other'."""
    source = Path(__file__).resolve().parents[2] / "src" / "clipdistill"
    kinds = set()
    for path in source.rglob("*.py"):
        text = path.read_text()
        kinds |= set(re.findall(r'BadSample\(\s*"(\w+)"', text)) | set(re.findall(r'\bbad\[\s*"(\w+)"\s*\]', text))
        kinds |= set(re.findall(r'"bad":\s*"(\w+)"', text))  # a stream's item for a kind it yields itself
    assert kinds and kinds <= set(KINDS), kinds - set(KINDS)
    assert list(KINDS) == sorted(KINDS)
