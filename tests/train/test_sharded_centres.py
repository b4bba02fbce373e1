"""cid_cluster's centres split across ranks (PartialFC): one rank equals the loss before sharding; two gloo
ranks equal one rank (loss, the student embeddings' gradients, every centre row's gradient, an optimizer
step with clipping and weight decay) at sample rate 1 and below; checkpoints keep each rank's shard and
its moments; the centres get no weight decay; K not divisible by W."""
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from clipdistill import UserError, distributed, losses
from clipdistill.losses.partial_fc import arcface_logits, sample_classes, shard_rows
from clipdistill.train import checkpoint
from clipdistill.train.optim import build_optimizer
from clipdistill.train.step import train_step
from toys import D_T, N, make_inputs, make_model

K = 41  # 21 rows on rank 0, 20 on rank 1
CENTRES = F.normalize(torch.randn(K, D_T, generator=torch.Generator().manual_seed(11)), dim=-1)
CLUSTER = {"centroids": CENTRES, "learnable": True, "scale": 16.0, "margin": 0.3}
CASES = {
    "rate_1": {"cid_cluster": CLUSTER},
    "rate_0.3": {"cid_cluster": {**CLUSTER, "sample_fraction": 0.3}},
    "fixed_centres": {"cid_cluster": {"centroids": CENTRES}},  # labels by the nearest centre across shards
    "with_clip": {"clip": {}, "cid_cluster": {**CLUSTER, "sample_fraction": 0.5}},
}
CENTROIDS = "objective.terms.cid_cluster.centroids"
OPTIM = {"lr": 0.1, "weight_decay": 0.2, "betas": (0.9, 0.98), "eps": 1e-6}
CPU = torch.device("cpu")


def batch_of(rows=slice(None)):
    images, tokens, teacher = make_inputs()
    return ({"student_image": images[rows], "student_text": tokens[rows]},
            teacher.with_(image=teacher.image[rows], text=teacher.text[rows]))


def step(model, optimizer, rows=slice(None)):
    batch, teacher = batch_of(rows)
    return train_step(model, batch, teacher, optimizer=optimizer, lr=0.1, device=CPU, precision="fp32",
                      grad_clip=0.05, step=1)[0]


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A rank shard put back together from every rank's rows (identity on one process)."""
    return torch.cat(distributed.all_objects(tensor.detach()))


# --- one rank: the loss as it was before sharding

def loss_before_sharding(loss, student, teacher):
    """cid_cluster's forward before the centres were sharded (dense centres, F.cross_entropy per tower)."""
    labels = (teacher.image @ loss.label_centroids.t()).argmax(dim=1)
    classes, columns = sample_classes(labels, len(loss.label_centroids), loss.num_sampled)
    weights = F.normalize(loss.centroids[classes], dim=-1)
    image, text = loss.project(student, teacher)
    return 0.5 * sum(F.cross_entropy(arcface_logits(x @ weights.t(), columns, loss.scale, loss.margin), columns)
                     for x in (image, text))


@pytest.mark.parametrize("fraction", [1.0, 0.3])
def test_one_rank_equals_the_loss_before_sharding(fraction):
    from toys import D_S
    _, _, teacher = make_inputs()
    g = torch.Generator().manual_seed(5)
    raw = [torch.randn(N, D_S, generator=g) for _ in range(2)]
    results = []
    for compute in ("sharded", "before"):
        torch.manual_seed(0)
        loss = losses.get("cid_cluster", student_dim=D_S, teacher_dim=D_T, sample_fraction=fraction, **CLUSTER)
        student = teacher.with_(image=raw[0].clone().requires_grad_(), text=raw[1].clone().requires_grad_(),
                                normalized=False)
        value = loss(student, teacher) if compute == "sharded" else loss_before_sharding(loss, student, teacher)
        value.backward()
        results.append((value.item(), [student.image.grad, student.text.grad,
                                       *[p.grad for p in loss.parameters()]]))
    (sharded, sharded_grads), (before, before_grads) = results
    assert sharded == pytest.approx(before, rel=1e-6)
    assert len(sharded_grads) == 2 + 5  # embeddings, two heads (weight, bias), centroids
    for got, expected in zip(sharded_grads, before_grads):
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5), (got - expected).abs().max()
    assert before_grads[-1].abs().sum() > 0


def test_shards_are_contiguous_and_cover_every_class():
    for classes, world in [(41, 2), (10, 3), (7, 7), (1_000_000, 8)]:
        shards = [shard_rows(classes, r, world) for r in range(world)]
        assert shards[0].start == 0 and shards[-1].stop == classes
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
        sizes = [s.stop - s.start for s in shards]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_centres_get_no_weight_decay_and_a_group_of_their_own():
    model = make_model(CASES["with_clip"])
    groups = build_optimizer(model, **OPTIM).param_groups
    decayed, plain, shards = groups
    centroids = dict(model.named_parameters())[CENTROIDS]
    assert shards["params"] == [centroids] and shards["weight_decay"] == 0.0 and shards["rank_shard"]
    assert not any(p is centroids for p in decayed["params"] + plain["params"])
    head = model.objective.terms["cid_cluster"].project.image.weight
    assert any(p is head for p in decayed["params"]) and decayed["weight_decay"] == 0.2
    # ... and DDP neither broadcasts nor averages them (nor the fixed label centres' shard).
    assert model._ddp_params_and_buffers_to_ignore == ["objective.terms.cid_cluster.label_centroids", CENTROIDS]


# --- two gloo ranks against one process

def _worker(rank, world, init_file, out_file, run_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    rows = slice(rank * N // world, (rank + 1) * N // world)
    results = {}
    for case, specs in CASES.items():
        model = DistributedDataParallel(make_model(specs), find_unused_parameters=True)
        inner = model.module
        shard = inner.objective.terms["cid_cluster"].shard
        results[(case, "rows")] = (shard.start, shard.stop, len(inner.objective.terms["cid_cluster"].label_centroids))
        # The student's embeddings as leaves: their gradient is the one every loss term sends them.
        batch, teacher = batch_of(rows)
        student = inner.embed(batch["student_image"], batch["student_text"])
        student = student.with_(image=student.image.detach().requires_grad_(),
                                text=student.text.detach().requires_grad_())
        total, _ = inner.objective(student, teacher)
        total.backward()
        results[(case, "embedding_grads")] = (whole(student.image.grad), whole(student.text.grad))
        results[(case, "totals")] = whole(total[None])
        centroids = dict(inner.named_parameters()).get(CENTROIDS)
        if centroids is not None:
            results[(case, "centroid_grad")] = whole(centroids.grad)
        # One optimizer step through DDP: clipping's norm and weight decay over the whole model.
        inner.zero_grad()
        optimizer = build_optimizer(inner, **OPTIM)
        step(model, optimizer, rows)
        results[(case, "after_step")] = {n: whole(p) if n == CENTROIDS else p.detach().clone()
                                         for n, p in inner.named_parameters()}
        if case == "with_clip":
            results["resume"] = _save_and_resume(model, optimizer, specs, rows, Path(run_dir))
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def _save_and_resume(model, optimizer, specs, rows, directory: Path) -> dict:
    """Save at step 1 (every rank's shard, then the main file), restore into a fresh model, step both."""
    checkpoint.save_rank_shard(directory, step=1, distiller=model.module, optimizer=optimizer)
    dist.barrier()
    if dist.get_rank() == 0:
        checkpoint.save_run(directory, step=1, distiller=model.module, optimizer=optimizer, bad_data={},
                            skipped_nonfinite=0, data={}, config={}, keep=2)
    dist.barrier()
    fresh = DistributedDataParallel(make_model(specs, seed=1), find_unused_parameters=True)
    fresh_optimizer = build_optimizer(fresh.module, **OPTIM)
    checkpoint.restore_run("latest", directory, fresh.module, fresh_optimizer)
    mine = dict(model.module.named_parameters())[CENTROIDS]
    theirs = dict(fresh.module.named_parameters())[CENTROIDS]
    restored = {"centres": torch.equal(mine, theirs),
                "moments": all(torch.equal(optimizer.state[mine][k], fresh_optimizer.state[theirs][k])
                               for k in ("exp_avg", "exp_avg_sq"))}
    step(model, optimizer, rows)
    step(fresh, fresh_optimizer, rows)
    restored["next_step_equal"] = all(torch.equal(a, b) for a, b in zip(model.module.parameters(),
                                                                       fresh.module.parameters()))
    restored["files"] = sorted(p.name for p in directory.iterdir())
    return restored


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(2, str(tmp / "pg"), str(tmp / "rank0.pt"), str(tmp / "run")), nprocs=2, join=True)
    return torch.load(tmp / "rank0.pt"), tmp / "run"


def one_process(case):
    """The same computations on one process, the whole batch."""
    model = make_model(CASES[case])
    batch, teacher = batch_of()
    student = model.embed(batch["student_image"], batch["student_text"])
    student = student.with_(image=student.image.detach().requires_grad_(), text=student.text.detach().requires_grad_())
    total, _ = model.objective(student, teacher)
    total.backward()
    centroids = dict(model.named_parameters()).get(CENTROIDS)
    grads = {"embedding_grads": (student.image.grad, student.text.grad), "total": total.item(),
             "centroid_grad": None if centroids is None else centroids.grad.clone()}
    model.zero_grad()
    step(model, build_optimizer(model, **OPTIM))
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(two_ranks, case):
    got, _ = two_ranks
    expected, after_step = one_process(case)
    assert got[(case, "rows")][:2] == (0, 21)  # rank 0's shard: K = 41 does not divide by 2
    assert got[(case, "rows")][2] == 21
    totals = got[(case, "totals")]
    assert totals[0].item() == pytest.approx(expected["total"], abs=1e-6) and torch.equal(totals[0], totals[1])
    # Each rank's embeddings get W x the one-process gradient (the gather's sum), as for every other term;
    # DDP's average brings the student's parameters back to 1x (compared after the step below).
    for tower_got, tower_expected in zip(got[(case, "embedding_grads")], expected["embedding_grads"]):
        assert torch.allclose(tower_got, 2 * tower_expected, atol=1e-6), (tower_got - 2 * tower_expected).abs().max()
    if expected["centroid_grad"] is not None:  # every centre row, from the rank that holds it
        assert got[(case, "centroid_grad")].shape == (K, D_T)
        assert torch.allclose(got[(case, "centroid_grad")], expected["centroid_grad"], atol=1e-6)
        assert expected["centroid_grad"].abs().sum() > 0
    assert set(got[(case, "after_step")]) == set(after_step)
    for name, value in after_step.items():
        assert torch.allclose(got[(case, "after_step")][name], value, atol=1e-6), name


def test_sampled_negatives_are_fewer_than_all_classes():
    """rate 0.3: the classes a step touches (the rows of the centres' gradient) are ⌈0.3 K⌉ = 13 of 41,
    the same on 2 ranks as on 1 (one global draw, each rank keeping its shard's part)."""
    expected, _ = one_process("rate_0.3")
    touched = (expected["centroid_grad"].abs().sum(dim=1) > 0).sum().item()
    assert touched == 13


def test_checkpoint_keeps_each_ranks_shard_and_moments(two_ranks):
    got, run = two_ranks
    resume = got["resume"]
    assert resume["files"] == ["step_00000001.pt", "step_00000001.rank0.pt", "step_00000001.rank1.pt"]
    assert resume["centres"] and resume["moments"] and resume["next_step_equal"]
    main = checkpoint.load(run / "step_00000001.pt")
    assert main["rank_shards"] == {"world_size": 2}
    assert "terms.cid_cluster.centroids" not in main["objective"]
    rank1 = checkpoint.load(run / "step_00000001.rank1.pt")
    assert rank1["objective"]["terms.cid_cluster.centroids"].shape == (20, D_T)
    assert [v["exp_avg"].shape for v in rank1["optimizer"].values()] == [(20, D_T)]


def test_resume_with_another_world_size_is_one_line(two_ranks):
    _, run = two_ranks
    model = make_model(CASES["with_clip"])
    with pytest.raises(UserError, match="split over 2 ranks and this run has 1; resume with 2 processes") as err:
        checkpoint.restore_run("latest", run, model, build_optimizer(model, **OPTIM))
    assert "\n" not in str(err.value)


def test_one_rank_checkpoint_round_trip(tmp_path):
    model = make_model(CASES["rate_0.3"])
    optimizer = build_optimizer(model, **OPTIM)
    step(model, optimizer)
    checkpoint.save_rank_shard(tmp_path, step=1, distiller=model, optimizer=optimizer)
    checkpoint.save_run(tmp_path, step=1, distiller=model, optimizer=optimizer, bad_data={}, skipped_nonfinite=0,
                        data={}, config={}, keep=1)
    fresh = make_model(CASES["rate_0.3"], seed=3)
    fresh_optimizer = build_optimizer(fresh, **OPTIM)
    checkpoint.restore_run("latest", tmp_path, fresh, fresh_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    step(model, optimizer)
    step(fresh, fresh_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    # The rotation removes an old step's shard files with it, and a kill's orphan (a rank file, no main file).
    checkpoint.save_rank_shard(tmp_path, step=5, distiller=model, optimizer=optimizer)
    checkpoint.save_rank_shard(tmp_path, step=2, distiller=model, optimizer=optimizer)
    checkpoint.save_run(tmp_path, step=2, distiller=model, optimizer=optimizer, bad_data={}, skipped_nonfinite=0,
                        data={}, config={}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002.pt", "step_00000002.rank0.pt"]
    (tmp_path / "step_00000002.rank0.pt").unlink()
    with pytest.raises(UserError, match="rank 0's shard of it .step_00000002.rank0.pt. is missing"):
        checkpoint.restore_run("latest", tmp_path, fresh, fresh_optimizer)


def test_fixed_centres_write_no_rank_files(tmp_path):
    """Fixed centres are rebuilt from their file: nothing per rank to save, no world size to insist on."""
    model = make_model(CASES["fixed_centres"])
    optimizer = build_optimizer(model, **OPTIM)
    assert checkpoint.save_rank_shard(tmp_path, step=1, distiller=model, optimizer=optimizer) is None
    checkpoint.save_run(tmp_path, step=1, distiller=model, optimizer=optimizer, bad_data={}, skipped_nonfinite=0,
                        data={}, config={}, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]
    assert "rank_shards" not in checkpoint.load(tmp_path / "step_00000001.pt")


def test_labels_from_the_data_keep_no_label_copy_of_the_shard():
    loss = losses.get("cid_cluster", label_tower="data", **CLUSTER)
    assert loss.label_centroids is None and loss.centroids.shape == (K, D_T)
    _, _, teacher = make_inputs()
    labels = torch.arange(N) * 5
    student = teacher.with_(image=teacher.image + 0.1, text=teacher.text - 0.1, normalized=False)
    nearest = losses.get("cid_cluster", **CLUSTER)
    assert loss(student, teacher.with_(extras={"cluster": labels})).item() == pytest.approx(
        nearest(student, teacher.with_(extras={"cluster": labels})).item(), rel=1e-6)
    with pytest.raises(UserError, match="label_tower=data needs the data's cluster labels"):
        loss(student, teacher)
    assert distributed.rank_shard_names(loss) == ["centroids"]


def test_fewer_centres_than_ranks_is_one_line(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 8)
    with pytest.raises(UserError, match="has 5 centroids, fewer than the 8 ranks"):
        losses.get("cid_cluster", centroids=CENTRES[:5])



# --- the training command on 2 gloo ranks: save, kill, resume (slow: three 2-process runs)

LOOP = ["student.model=tiny", "teacher.source=openclip", "teacher.model=tiny-teacher", "data.num_samples=64",
        "data.workers=0", "train.batch_size=8", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=2",
        "train.log_every=1", "train.progress=false", "eval.retrieval=", "eval.zero_shot=", "optim.warmup_steps=1",
        "losses.clip.weight=1.0", "losses.cid_cluster.learnable=true", "losses.cid_cluster.sample_fraction=0.5"]


def _loop_worker(rank, world, init_file, out_dir, overrides):
    import os
    from datetime import timedelta

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    from clipdistill import config as config_lib
    from clipdistill.train import loop

    try:
        loop.run(config_lib.load(None, overrides), out_dir)
    finally:
        dist.destroy_process_group()


def _loop_on_two_ranks(tmp, run_name, overrides):
    init = tmp / f"pg-{run_name}-{len(list(tmp.iterdir()))}"
    mp.spawn(_loop_worker, args=(2, str(init), str(tmp / run_name), overrides), nprocs=2, join=True)


def _losses(run_dir):
    import json

    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.mark.slow
def test_training_command_on_two_ranks_resumes_its_shards(tmp_path):
    import numpy as np

    centres = tmp_path / "centres.npy"
    np.save(centres, F.normalize(torch.randn(13, 96, generator=torch.Generator().manual_seed(2)), dim=-1).numpy())
    overrides = LOOP + [f"losses.cid_cluster.centroids={centres}"]
    _loop_on_two_ranks(tmp_path, "continuous", overrides)
    _loop_on_two_ranks(tmp_path, "resumed", overrides)
    killed = tmp_path / "resumed" / "checkpoints"
    (killed / "step_00000004.pt").unlink()  # killed after the ranks' step-4 files, before the main one
    _loop_on_two_ranks(tmp_path, "resumed", overrides + ["train.resume=latest"])
    continuous = tmp_path / "continuous" / "checkpoints"
    assert sorted(p.name for p in continuous.iterdir()) == [
        "step_00000002.pt", "step_00000002.rank0.pt", "step_00000002.rank1.pt",
        "step_00000004.pt", "step_00000004.rank0.pt", "step_00000004.rank1.pt"]
    assert _losses(tmp_path / "resumed")[-2:] == _losses(tmp_path / "continuous")[-2:]
    for name in ("step_00000004.pt", "step_00000004.rank0.pt", "step_00000004.rank1.pt"):
        a, b = checkpoint.load(continuous / name), checkpoint.load(killed / name)
        for part in ("student", "objective"):
            for key, value in a.get(part, {}).items():
                assert torch.equal(value, b[part][key]), (name, part, key)
    shard = checkpoint.load(continuous / "step_00000004.rank1.pt")
    assert shard["objective"]["terms.cid_cluster.centroids"].shape == (6, 96)  # 13 = 7 + 6
    # One process cannot take over two ranks' shards: one line.
    from clipdistill import config as config_lib
    from clipdistill.train import loop

    with pytest.raises(UserError, match="split over 2 ranks and this run has 1; resume with 2 processes"):
        loop.run(config_lib.load(None, overrides + ["train.resume=latest"]), tmp_path / "continuous")
