"""Gradient accumulation: 2 micro-batches of B give exactly the gradients of one batch of 2B."""
import pytest
import torch

from clipdistill.train.step import accumulate_gradients
from toys import CASES, HEADS, ToyStudent, make_inputs, make_model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("case", list(CASES))
def test_accumulating_two_halves_equals_one_batch(case, heads):
    images, tokens, teacher = make_inputs()
    whole = make_model(CASES[case], heads=heads)
    accumulate_gradients(whole, images, tokens, teacher, accum_steps=1, device=torch.device("cpu"),
                         precision="fp32", step=1)
    split = make_model(CASES[case], heads=heads)
    accumulate_gradients(split, images, tokens, teacher, accum_steps=2, device=torch.device("cpu"),
                         precision="fp32", step=1)
    expected, got = grads(whole), grads(split)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5), (name, (got[name] - grad).abs().max())


class MaskingStudent(ToyStudent):
    """A student whose image tower drops features at random in training (as patch dropout does for mfd)."""

    def encode_image(self, x, normalize=False):
        return self.visual(torch.nn.functional.dropout(x, p=0.5, training=True))


def test_accumulation_is_exact_when_the_student_draws_random_masks():
    from clipdistill.losses.objective import build_objective
    from clipdistill.train.step import Distiller
    from toys import D_S, D_T

    images, tokens, teacher = make_inputs()

    def model():
        torch.manual_seed(0)
        return Distiller(MaskingStudent(), build_objective(CASES["clipkd"], student_dim=D_S, teacher_dim=D_T))

    split = model()
    torch.manual_seed(5)
    accumulate_gradients(split, images, tokens, teacher, accum_steps=2, device=torch.device("cpu"),
                         precision="fp32", step=1)
    after = torch.rand(1)
    # Oracle: the masks the two micro-batches draw in turn, used in one full-batch backward.
    oracle = model()
    torch.manual_seed(5)
    halves = [oracle.embed(i, t) for i, t in zip(images.chunk(2), tokens.chunk(2))]
    student = halves[0].with_(image=torch.cat([h.image for h in halves]), text=torch.cat([h.text for h in halves]))
    oracle.objective(student, teacher)[0].backward()
    assert torch.rand(1) == after  # the RNG stream goes on as after one pass: later steps are not shifted
    expected, got = grads(oracle), grads(split)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5), (name, (got[name] - grad).abs().max())
