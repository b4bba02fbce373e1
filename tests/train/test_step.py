"""One optimization step: learnable loss parts are optimized, clipped, and NaNs stop the run."""
import copy
import math

import pytest
import torch

from clipdistill.train.optim import build_optimizer, load_optimizer_state, warmup_cosine
from clipdistill.train.step import NonFiniteLoss, train_step
from toys import CASES, make_inputs, make_model


def batch_of(images, tokens):
    return {"student_image": images, "student_text": tokens}


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_heads_and_scales_are_optimized_and_clipped():
    model = make_model(CASES["clipkd"])
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    head = model.objective.terms["fd"].project.image.weight
    icl_scale = model.objective.terms["icl"].cross_scale.param
    assert id(head) in optimized and id(icl_scale) in optimized
    images, tokens, teacher = make_inputs()
    before = head.detach().clone()
    seen_norms = []
    original_step = optimizer.step

    def spy_step(*args, **kwargs):  # the global norm the optimizer actually applies, heads included
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return original_step(*args, **kwargs)

    optimizer.step = spy_step
    train_step(model, batch_of(images, tokens), teacher, optimizer=optimizer, lr=0.1,
               device=torch.device("cpu"), precision="fp32", grad_clip=0.01, step=1)
    assert seen_norms[0] == pytest.approx(0.01, rel=1e-4)
    assert not torch.equal(before, head)


def test_no_decay_on_scales_and_biases():
    model = make_model(CASES["clipkd"])
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") for p in decayed["params"])
    assert any("log_scale" in names[id(p)] for p in plain["params"])
    assert any("logit_scale" in names[id(p)] for p in plain["params"])


def test_fused_adamw_matches_the_per_parameter_loop():
    # The fused kernel (what build_optimizer picks on CPU and CUDA) against torch's reference loop.
    model = make_model(CASES["clipkd"])
    reference_model = make_model(CASES["clipkd"])  # same seed: same initial weights
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    assert all(group["fused"] for group in optimizer.param_groups)
    reference = build_optimizer(reference_model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    for group in reference.param_groups:
        group["fused"], group["foreach"] = None, False
    images, tokens, teacher = make_inputs()
    for _ in range(5):
        for m, opt in ((model, optimizer), (reference_model, reference)):
            opt.zero_grad()
            m(images, tokens, teacher)[0].backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
    moved = max((p - initial[n]).abs().max().item() for n, p in model.named_parameters())
    assert moved > 1e-2  # the weights did move: the comparison is not of two untouched models


def _steps(model, optimizer, count):
    images, tokens, teacher = make_inputs()
    for _ in range(count):
        optimizer.zero_grad()
        model(images, tokens, teacher)[0].backward()
        optimizer.step()


def test_resuming_a_per_parameter_loop_checkpoint_keeps_the_fused_kernel():
    # A checkpoint written before build_optimizer chose the fused kernel carries fused=None in its groups.
    old_model, model = make_model(CASES["clipkd"]), make_model(CASES["clipkd"])
    old = build_optimizer(old_model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    for group in old.param_groups:
        group["fused"], group["foreach"] = None, False
    _steps(old_model, old, 3)
    model.load_state_dict(old_model.state_dict())
    optimizer = build_optimizer(model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    load_optimizer_state(optimizer, copy.deepcopy(old.state_dict()))  # as from disk: no shared moments
    assert all(group["fused"] for group in optimizer.param_groups)
    assert all(s["step"].item() == 3 for s in optimizer.state.values())
    _steps(old_model, old, 2)
    _steps(model, optimizer, 2)  # the resumed run continues where the old one would have
    for (name, p), q in zip(model.named_parameters(), old_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="where step counts live matters on a GPU")
def test_resuming_puts_the_step_counts_where_this_runs_kernel_keeps_them():
    model = make_model(CASES["clipkd"]).cuda()
    images, tokens, teacher = (x.cuda() if torch.is_tensor(x) else x for x in make_inputs())
    teacher = teacher.with_(image=teacher.image.cuda(), text=teacher.text.cuda(),
                            logit_scale=teacher.logit_scale.cuda())
    fused = build_optimizer(model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    model(images, tokens, teacher)[0].backward()
    fused.step()
    loop = build_optimizer(model, lr=0.01, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    for group in loop.param_groups:
        group["fused"] = None
    load_optimizer_state(loop, copy.deepcopy(fused.state_dict()))
    assert all(s["step"].device.type == "cpu" for s in loop.state.values())
    load_optimizer_state(fused, copy.deepcopy(loop.state_dict()))
    assert all(s["step"].device.type == "cuda" for s in fused.state.values())


def test_without_a_fused_kernel_the_per_parameter_loop_is_used(monkeypatch):
    real = torch.optim.AdamW

    def old_torch(*args, fused=None, **kwargs):  # torch < 2.4 on CPU
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be CUDA, floating point Tensors")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", old_torch)
    optimizer = build_optimizer(make_model({"clip": {}}), lr=0.1, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    assert not any(group["fused"] for group in optimizer.param_groups)


def test_non_finite_loss_names_step_and_term():
    model = make_model({"clip": {}, "fd": {}})
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    images, tokens, teacher = make_inputs()
    images[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 7 in term\(s\) clip, fd"):
        train_step(model, batch_of(images, tokens), teacher, optimizer=optimizer, lr=0.1,
                   device=torch.device("cpu"), precision="fp32", grad_clip=1.0, step=7)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # no update applied


def test_lr_is_a_pure_function_of_the_step():
    # warmup 2 steps to the base lr, then cosine to 0 at step 6 (hand-computed).
    lrs = [warmup_cosine(step, base_lr=1.0, warmup_steps=2, total_steps=6) for step in range(8)]
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0]
    assert lrs == pytest.approx(expected, abs=1e-12)
