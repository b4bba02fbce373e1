"""mfd masked=feature_only: the feature term sees a masked image, every other term the full one.

A real open_clip ViT (the tiny preset, 16 patches) so open_clip's own PatchDropout does the masking.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout

from clipdistill import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses.objective import build_objective
from clipdistill.models import build_student
from clipdistill.train.step import Distiller, accumulate_gradients
from toys import ToyStudent

N, D_T = 8, 96
FEATURE_ONLY = {"clip": {"weight": 1.0}, "mfd": {"weight": 3.9, "mask_ratio": 0.5, "masked": "feature_only"}}
ALL = {"clip": {"weight": 1.0}, "mfd": {"weight": 3.9, "mask_ratio": 0.5, "masked": "all"}}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_student("tiny")


def inputs(tiny):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(N, 3, 32, 32, generator=g)
    tokens = tiny.tokenizer([f"a red square at {i}" for i in range(N)])
    teacher = Embeddings(F.normalize(torch.randn(N, D_T, generator=g), dim=-1),
                         F.normalize(torch.randn(N, D_T, generator=g), dim=-1), torch.tensor(50.0), normalized=True)
    return images, tokens, teacher


def distiller(tiny, specs):
    torch.manual_seed(1)
    return Distiller(copy.deepcopy(tiny.model), build_objective(specs, student_dim=tiny.embed_dim, teacher_dim=D_T))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_full_forward_for_the_task_masked_forward_for_the_feature_term(tiny):
    images, tokens, teacher = inputs(tiny)
    model = distiller(tiny, FEATURE_ONLY).train()
    torch.manual_seed(5)
    student = model.embed(images, tokens)
    assert type(model.student.visual.patch_dropout).__name__ == "Identity"  # restored after the masked pass
    with torch.no_grad():
        full = model.student.encode_image(images, normalize=False)  # no patch dropout installed: every patch
    assert torch.allclose(student.image, full, atol=1e-6)
    # Oracle for the masked view: open_clip's own patch dropout on the whole tower (mfd masked=all), same RNG.
    masked_student = copy.deepcopy(tiny)
    masked_student.model.load_state_dict(model.student.state_dict())
    masked_student.drop_patches(0.5)
    masked_student.model.train()
    torch.manual_seed(5)  # the full forwards draw nothing: the masked pass draws first
    with torch.no_grad():
        expected = masked_student.model.encode_image(images, normalize=False)
    assert torch.allclose(student.extras["masked_image"], expected, atol=1e-6)
    assert not torch.allclose(student.extras["masked_image"], full, atol=1e-3)


def test_task_term_sees_the_full_image_only_with_feature_only(tiny):
    images, tokens, teacher = inputs(tiny)
    plain = distiller(tiny, {"clip": {"weight": 1.0}, "fd": {"weight": 3.9}}).train()
    _, plain_terms = plain(images, tokens, teacher)
    feature_only = distiller(tiny, FEATURE_ONLY).train()
    _, terms = feature_only(images, tokens, teacher)
    assert terms["clip"].item() == pytest.approx(plain_terms["clip"].item(), rel=1e-6)  # unmasked
    assert terms["mfd"].item() != pytest.approx(plain_terms["fd"].item(), rel=1e-3)  # masked
    masked_all = distiller(tiny, ALL)
    masked_all.student.visual.patch_dropout = PatchDropout(0.5)  # as the training loop does for masked=all
    _, all_terms = masked_all.train()(images, tokens, teacher)
    assert all_terms["clip"].item() != pytest.approx(plain_terms["clip"].item(), rel=1e-3)  # masked=all masks it too


def test_out_of_training_mode_the_view_is_the_full_image(tiny):
    images, tokens, _ = inputs(tiny)
    model = distiller(tiny, FEATURE_ONLY).eval()
    with torch.no_grad():
        student = model.embed(images, tokens)
    assert student.extras["masked_image"] is student.image


@pytest.mark.parametrize("specs", [FEATURE_ONLY, ALL], ids=["feature_only", "all"])
def test_accumulation_is_exact_with_the_same_masks(tiny, specs):
    images, tokens, teacher = inputs(tiny)

    def model():
        built = distiller(tiny, specs).train()
        if specs is ALL:  # as the training loop does for masked=all
            built.student.visual.patch_dropout = PatchDropout(0.5)
        return built

    split = model()
    torch.manual_seed(7)
    accumulate_gradients(split, images, tokens, teacher, accum_steps=2, device=torch.device("cpu"),
                         precision="fp32", step=1)
    after = torch.rand(1)
    # Oracle: the micro-batches embedded in turn (the masks they draw), one full-batch backward.
    oracle = model()
    torch.manual_seed(7)
    halves = [oracle.embed(i, t) for i, t in zip(images.chunk(2), tokens.chunk(2))]
    student = halves[0].with_(image=torch.cat([h.image for h in halves]), text=torch.cat([h.text for h in halves]),
                              extras={k: torch.cat([h.extras[k] for h in halves]) for k in halves[0].extras})
    oracle.objective(student, teacher)[0].backward()
    assert torch.rand(1) == after  # the RNG goes on as after one pass
    expected, got = grads(oracle), grads(split)
    assert set(got) == set(expected) and any("visual" in name for name in got)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5), (name, (got[name] - grad).abs().max())


def test_feature_only_refuses_a_student_without_patches():
    objective = build_objective(FEATURE_ONLY, student_dim=6, teacher_dim=10)
    with pytest.raises(UserError, match="needs a ViT student"):
        Distiller(ToyStudent(), objective)


def test_the_loss_alone_says_what_it_misses():
    images = torch.randn(N, 64)
    student = Embeddings(images, torch.randn(N, 64), torch.tensor(10.0))
    teacher = Embeddings(F.normalize(torch.randn(N, D_T), dim=-1), F.normalize(torch.randn(N, D_T), dim=-1),
                         torch.tensor(50.0), normalized=True)
    loss = build_objective(FEATURE_ONLY, student_dim=64, teacher_dim=D_T).terms["mfd"]
    with pytest.raises(ValueError, match="masked_image"):
        loss(student, teacher)
    masked = torch.randn(N, 64)
    fd = build_objective({"fd": {}}, student_dim=64, teacher_dim=D_T).terms["fd"]
    fd.load_state_dict(loss.state_dict())
    value = loss(student.with_(extras={"masked_image": masked}), teacher)
    assert value.item() == pytest.approx(fd(student.with_(image=masked), teacher).item(), rel=1e-6)


def test_training_run_with_feature_only_and_shared_heads(tmp_path):
    from clipdistill import config as config_lib
    from clipdistill.train import checkpoint
    from clipdistill.train.loop import run

    cfg = config_lib.load(None, [
        "student.model=tiny", "teacher.source=openclip", "teacher.model=tiny-teacher", "data.num_samples=64",
        "data.workers=0", "train.batch_size=16", "train.steps=2", "train.log_every=1", "train.progress=false",
        "eval.retrieval=", "eval.zero_shot=", "optim.warmup_steps=1", "train.heads=shared", "train.accum_steps=2",
        "losses.clip.weight=1.0", "losses.mfd.weight=3.9", "losses.mfd.masked=feature_only",
        "losses.mfd.mask_ratio=0.5", "losses.icl.weight=1.0", "losses.icl.scale_param=raw",
        "losses.icl.init_scale=2.659"])
    run(cfg, tmp_path)
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1])
    objective = state["objective"]
    assert torch.equal(objective["terms.mfd.project.image.weight"], objective["terms.icl.project.image.weight"])
    assert "terms.icl.cross_scale.scale" in objective
    assert state["config"]["student"]["model"] == "tiny"
    assert "patch_dropout" not in str(state["config"]["student"])  # the student itself trains on full images
