"""Gradient accumulation: 2 micro-batches of B give exactly the gradients of one batch of 2B."""
import pytest
import torch

from clipdistill.train.step import accumulate_gradients
from toys import CASES, make_inputs, make_model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_accumulating_two_halves_equals_one_batch(case):
    images, tokens, teacher = make_inputs()
    whole = make_model(CASES[case])
    accumulate_gradients(whole, images, tokens, teacher, accum_steps=1, device=torch.device("cpu"),
                         precision="fp32", step=1)
    split = make_model(CASES[case])
    accumulate_gradients(split, images, tokens, teacher, accum_steps=2, device=torch.device("cpu"),
                         precision="fp32", step=1)
    expected, got = grads(whole), grads(split)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5), (name, (got[name] - grad).abs().max())
