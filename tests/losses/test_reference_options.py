"""The CLIP-KD reference's options: raw learnable scales (init 2.659) and one shared projection head.

The naive reference below is transcribed from winycg/CLIP-KD, src/open_clip/loss.py @ e151019
(``KDClipLoss.forward``, the gathered-batch branch), with its parameters taken from our objective.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from clipdistill import losses
from clipdistill.errors import UserError
from clipdistill.losses.objective import build_objective
from clipdistill.losses.scales import LearnableScale
from clipdistill.train.optim import build_optimizer
from clipdistill.train.step import train_step
from toys import CASES, RAW, D_S, D_T, make_inputs, make_model

REFERENCE = {"fd": {"weight": 3.9}, "icl": dict(RAW), "cross_kd": dict(RAW), "afd": dict(RAW)}


def reference_kd_terms(s_image, s_text, t_image, t_text, t_logit_scale, visual_proj, text_proj,
                       cross_logit_scale, visual_fusion_proj, text_fusion_proj, fusion_logit_scale):
    """KDClipLoss.forward's fd, icl, cross_kd and afd, line by line (plain torch, no clipdistill code).

    One deviation, a bug the reference has: its fusion layers map s_dim + t_dim -> s_dim but are fed
    the *projected* (t_dim) student, which crashes when the widths differ; here they map 2·t_dim -> t_dim.
    """
    labels = torch.arange(s_image.shape[0])
    all_image_features, all_text_features = visual_proj(s_image), text_proj(s_text)
    normalized_all_image_features = F.normalize(all_image_features, dim=1)
    normalized_all_text_features = F.normalize(all_text_features, dim=1)
    fd_loss = F.mse_loss(normalized_all_image_features, t_image) + F.mse_loss(normalized_all_text_features, t_text)
    logits_per_s_image_to_t_text = cross_logit_scale * normalized_all_image_features @ t_text.T
    logits_per_s_text_to_t_image = cross_logit_scale * normalized_all_text_features @ t_image.T
    icl_loss = (F.cross_entropy(logits_per_s_image_to_t_text, labels)
                + F.cross_entropy(logits_per_s_text_to_t_image, labels)) / 2
    t_logits_per_image = t_logit_scale * t_image @ t_text.T
    t_logits_per_text = t_logits_per_image.T

    def kl(y_s, y_t, T=1.0):  # DistillKL(T=1)
        return F.kl_div(F.log_softmax(y_s / T, dim=1), F.softmax(y_t / T, dim=1), reduction="batchmean") * T ** 2

    cross_kd_loss = (kl(logits_per_s_image_to_t_text, t_logits_per_image)
                     + kl(logits_per_s_text_to_t_image, t_logits_per_text)) / 2
    img_fusion_feat = F.normalize(visual_fusion_proj(torch.cat([normalized_all_image_features, t_image], dim=1)), dim=1)
    txt_fusion_feat = F.normalize(text_fusion_proj(torch.cat([normalized_all_text_features, t_text], dim=1)), dim=1)
    logits_per_fusion_image = fusion_logit_scale * img_fusion_feat @ txt_fusion_feat.T
    afd_loss = (F.cross_entropy(logits_per_fusion_image, labels)
                + F.cross_entropy(logits_per_fusion_image.T, labels)) / 2
    return {"fd": fd_loss, "icl": icl_loss, "cross_kd": cross_kd_loss, "afd": afd_loss}


def test_raw_shared_objective_matches_the_reference_transcription():
    model = make_model(REFERENCE, heads="shared")
    images, tokens, teacher = make_inputs()
    terms = model.objective.terms
    with torch.no_grad():  # move the scales off their init so a mix-up of the two would show
        terms["icl"].cross_scale.param.fill_(3.1)
        terms["afd"].fusion_scale.param.fill_(2.2)
    _, values = model(images, tokens, teacher)
    student = model.embed(images, tokens)
    head, afd = terms["fd"].project, terms["afd"]
    expected = reference_kd_terms(student.image, student.text, teacher.image, teacher.text, teacher.logit_scale,
                                  head.image, head.text, 3.1, afd.fuse_image, afd.fuse_text, 2.2)
    # fd: the reference's element mean x alpha equals our per-sample sum over dims at weight alpha / D_t.
    assert values["fd"].item() == pytest.approx(D_T * expected["fd"].item(), rel=1e-5)
    for name in ("icl", "cross_kd", "afd"):
        assert values[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name


def test_raw_scale_starts_at_the_reference_value_and_is_the_parameter_itself():
    icl = losses.get("icl", student_dim=D_S, teacher_dim=D_T, **RAW)
    assert icl.cross_scale().item() == pytest.approx(2.659) and icl.cross_scale.param.item() == pytest.approx(2.659)
    assert "cross_scale.scale" in icl.state_dict() and "cross_scale.log_scale" not in icl.state_dict()
    default = losses.get("icl", student_dim=D_S, teacher_dim=D_T)
    assert default.cross_scale().item() == pytest.approx(1 / 0.07)
    assert default.cross_scale.param.item() == pytest.approx(math.log(1 / 0.07))
    # d loss / d κ is the same in both forms; the raw parameter receives it as it is, log κ gets it times κ.
    images, tokens, teacher = make_inputs()
    student = make_model({"clip": {}}).embed(images, tokens)
    student = student.with_(image=student.image.detach(), text=student.text.detach())
    exp_form = losses.get("icl", student_dim=D_S, teacher_dim=D_T, init_scale=2.659)
    raw_form = losses.get("icl", student_dim=D_S, teacher_dim=D_T, **RAW)
    raw_form.project.load_state_dict(exp_form.project.state_dict())
    exp_form(student, teacher).backward()
    raw_form(student, teacher).backward()
    assert exp_form.cross_scale.param.grad.item() == pytest.approx(2.659 * raw_form.cross_scale.param.grad.item(),
                                                                   rel=1e-4)


def test_bad_scale_options_are_one_line():
    with pytest.raises(UserError, match="scale_param must be one of exp, raw"):
        losses.get("cross_kd", scale_param="log")
    with pytest.raises(UserError, match="init_scale must be > 0"):
        losses.get("afd", teacher_dim=4, init_scale=0.0)


def test_shared_heads_are_one_parameter_set():
    model = make_model(CASES["every_head"], heads="shared")
    terms = model.objective.terms
    heads = [loss.project for loss in terms.values() if hasattr(loss, "project")]
    assert len(heads) == 7 and all(h is heads[0] for h in heads)  # fd icl cross_kd gd afd cid_instance cid_cluster
    cross = [terms[name].cross_scale for name in ("icl", "cross_kd", "cid_instance")]
    assert all(c is cross[0] for c in cross)
    assert terms["afd"].fusion_scale is not cross[0]  # AFD's scale is its own, as the reference's
    per_loss = make_model(CASES["every_head"])
    n_shared = sum(p.numel() for p in model.objective.parameters())
    n_per_loss = sum(p.numel() for p in per_loss.objective.parameters())
    head_size = sum(p.numel() for p in heads[0].parameters())
    assert n_per_loss - n_shared == 6 * head_size + 2  # six heads and two cross scales fewer
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(optimized) == len({id(p) for p in optimized})  # each parameter handed over once


@pytest.mark.parametrize("name", ["fd", "icl", "cross_kd", "gd", "afd", "cid_instance", "cid_cluster"])
def test_every_term_sends_its_gradient_into_the_shared_head(name):
    images, tokens, teacher = make_inputs()
    model = make_model(CASES["every_head"], heads="shared")
    student = model.embed(images, tokens)
    model.objective.terms[name](student, teacher).backward()
    head = model.objective.terms["fd"].project
    assert head.image.weight.grad is not None and head.image.weight.grad.abs().sum() > 0, name
    assert head.text.weight.grad is not None and head.text.weight.grad.abs().sum() > 0, name


def test_shared_head_gradient_is_the_weighted_sum_over_terms():
    images, tokens, teacher = make_inputs()
    model = make_model(CASES["every_head"], heads="shared")
    head = model.objective.terms["fd"].project.image.weight
    model(images, tokens, teacher)[0].backward()
    together = head.grad.clone()
    summed = torch.zeros_like(together)
    for name, loss in model.objective.terms.items():
        head.grad = None
        weight = model.objective.weights[name]
        (weight * loss(model.embed(images, tokens), teacher)).backward()
        summed += head.grad if head.grad is not None else 0
    assert torch.allclose(together, summed, atol=1e-6)


def test_shared_objective_state_dict_and_resume():
    """Save after 2 steps, load into another initialization, 2 more steps: equal to 4 steps straight."""
    images, tokens, teacher = make_inputs()
    batch = {"student_image": images, "student_text": tokens}

    def steps(model, optimizer, first, last):
        for step in range(first, last):
            train_step(model, batch, teacher, optimizer=optimizer, lr=0.05, device=torch.device("cpu"),
                       precision="fp32", grad_clip=1.0, step=step)

    def fresh(seed):
        model = make_model(CASES["every_head"], seed=seed, heads="shared")
        return model, build_optimizer(model, lr=0.05, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)

    straight, straight_opt = fresh(0)
    steps(straight, straight_opt, 0, 4)
    first, first_opt = fresh(0)
    steps(first, first_opt, 0, 2)
    saved = {"model": first.state_dict(), "optimizer": first_opt.state_dict()}
    resumed, resumed_opt = fresh(1)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    terms = resumed.objective.terms
    assert terms["icl"].project is terms["fd"].project and terms["icl"].cross_scale is terms["cross_kd"].cross_scale
    steps(resumed, resumed_opt, 2, 4)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), key


def test_terms_that_cannot_share_are_refused_in_one_line():
    with pytest.raises(UserError, match="'cross_kd' and 'icl' cannot share one cross_scale"):
        build_objective({"icl": {}, "cross_kd": dict(RAW)}, student_dim=D_S, teacher_dim=D_T, heads="shared")
    with pytest.raises(UserError, match="'icl' and 'fd' cannot share one project"):
        build_objective({"fd": {}, "icl": {"always_project": True}}, student_dim=D_S, teacher_dim=D_S, heads="shared")
    with pytest.raises(UserError, match="train.heads must be one of per_loss, shared"):
        build_objective({"fd": {}}, student_dim=D_S, teacher_dim=D_T, heads="one")


def test_per_loss_keeps_a_head_and_scale_per_term():
    terms = make_model(CASES["every_head"]).objective.terms
    assert terms["fd"].project is not terms["icl"].project
    assert terms["icl"].cross_scale is not terms["cross_kd"].cross_scale
    assert all(isinstance(terms[n].cross_scale, LearnableScale) for n in ("icl", "cross_kd", "cid_instance"))
