"""A student that reuses its teacher's tower: one open_clip model, the reused tower frozen and the teacher's."""
import pytest
import torch

from clipdistill import build
from clipdistill import config as config_lib
from clipdistill.errors import UserError
from clipdistill.models import build_student, load_teacher
from clipdistill.models.student import trained_student
from clipdistill.models.towers import freeze_tower, reused_tower, student_with_teacher_tower, tower_of
from clipdistill.train.optim import build_optimizer

CAPTIONS = ["a red circle", "two blue squares on the left", "x"]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(3)
    return load_teacher("openclip", model="tiny-teacher")


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(4)
    return build_student("tiny")


def test_text_tower_is_the_teachers_and_the_image_tower_the_students(teacher, student):
    hybrid = student_with_teacher_tower(student, teacher, "text")
    assert hybrid.embed_dim == teacher.embed_dim == 96  # the student's projection maps into the teacher's space
    assert hybrid.model.visual.proj.shape == (64, 96)
    tokens = hybrid.tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(hybrid.model.encode_text(tokens, normalize=True), teacher.encode_text(tokens),
                                   atol=1e-6, rtol=0)
    own = student.model.state_dict()
    for key, value in hybrid.model.state_dict().items():  # every image-tower weight but the projection is the student's
        if key.startswith("visual.") and key != "visual.proj":
            assert torch.equal(value, own[key]), key
    assert hybrid.image_spec == student.image_spec
    assert hybrid.build_record["reused_tower"] == "text"


def test_image_tower_reuse_takes_the_teachers_image_tower_and_preprocessing(teacher, student):
    hybrid = student_with_teacher_tower(student, teacher, "image")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hybrid.model.encode_image(images, normalize=True), teacher.encode_image(images),
                                   atol=1e-6, rtol=0)
    assert hybrid.image_spec == teacher.image_spec and hybrid.embed_dim == 96
    assert hybrid.model.text_projection.shape == (64, 96)
    assert all(p.requires_grad == (tower_of(n) != "image") for n, p in hybrid.model.named_parameters())


def test_reused_tower_is_frozen_out_of_the_optimizer_and_stays_in_eval_mode(teacher, student):
    hybrid = student_with_teacher_tower(student, teacher, "text")
    model = hybrid.model
    model.train()
    assert not model.transformer.training and not model.ln_final.training and model.visual.training
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(tower_of(n) == "text" for n in frozen)
    assert {"text_projection", "positional_embedding", "token_embedding.weight"} <= frozen
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for n, p in model.named_parameters() if n in frozen)
    assert id(model.visual.proj) in in_optimizer and id(model.logit_scale) in in_optimizer
    # A step of an objective over both towers moves the image tower only.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, tokens = torch.randn(4, 3, 32, 32), hybrid.tokenizer(CAPTIONS + ["y"])
    (model.encode_image(images) @ model.encode_text(tokens).t()).sum().backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if tower_of(k) == "text")
    assert not torch.equal(before["visual.proj"], after["visual.proj"])


def test_impossible_combinations_are_one_line():
    with pytest.raises(UserError, match="both 'teacher'"):
        reused_tower("teacher", "teacher")
    with pytest.raises(UserError, match="must be student or teacher"):
        reused_tower("techer", "student")
    assert reused_tower() is None and reused_tower(text_tower="teacher") == "text"


def test_a_hugging_face_teacher_and_a_missing_teacher_are_refused(student):
    class HFLike:  # what load_teacher("hf") returns: no open_clip config
        model_cfg = None

    with pytest.raises(UserError, match="needs an open_clip teacher"):
        student_with_teacher_tower(student, HFLike(), "text")
    cfg = config_lib.load(None, ["student.text_tower=teacher"])
    with pytest.raises(UserError, match="needs a teacher"):
        build.tower_teacher(cfg.student, cfg.teacher, None, "cpu")


def test_a_teacher_of_another_family_is_refused(student, teacher):
    class Wrapped:  # a teacher whose module lacks the text tower keys of its own config
        model_cfg, image_spec, tokenizer = teacher.model_cfg, teacher.image_spec, teacher.tokenizer
        encoder = torch.nn.Module()

    with pytest.raises(UserError, match="the teacher has no"):
        student_with_teacher_tower(student, Wrapped(), "text")


def test_a_checkpoint_rebuilds_the_hybrid_without_the_teacher(teacher, student):
    hybrid = student_with_teacher_tower(student, teacher, "text")
    state = {"student": hybrid.model.state_dict(), "config": {"student": {"model": "tiny", "text_tower": "teacher"}},
             "student_build": hybrid.build_record}
    rebuilt = trained_student(state, "memory")
    tokens, images = hybrid.tokenizer(CAPTIONS), torch.randn(3, 3, 32, 32)
    hybrid.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_text(tokens), teacher.encode_text(tokens), atol=1e-6, rtol=0)
        torch.testing.assert_close(rebuilt.encode_image(images), hybrid.encode_image(images))
    assert not any(p.requires_grad for n, p in rebuilt.model.named_parameters() if tower_of(n) == "text")


def test_freeze_tower_survives_nested_train_calls():
    model = build_student("tiny").model
    freeze_tower(model, "image")
    model.train(True)
    model.train(True)
    assert not any(m.training for m in model.visual.modules())
    assert model.transformer.training


def test_hugging_face_export_of_the_hybrid_gives_the_teachers_text_embeddings(tmp_path, teacher, student):
    transformers = pytest.importorskip("transformers")
    from clipdistill.export_hf import write_hf

    hybrid = student_with_teacher_tower(student, teacher, "text")
    state = {"student": hybrid.model.state_dict(), "config": {"student": {"model": "tiny"}},
             "student_build": hybrid.build_record}
    write_hf(trained_student(state, "memory"), tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = hybrid.tokenizer(CAPTIONS)
    with torch.no_grad():
        text = hf.get_text_features(input_ids=tokens)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        torch.testing.assert_close(torch.nn.functional.normalize(text, dim=-1), teacher.encode_text(tokens),
                                   atol=1e-5, rtol=0)


def test_a_text_tower_with_another_tokenizer_is_refused(teacher, student):
    import open_clip

    class OtherTeacher:
        model_cfg, image_spec, encoder = teacher.model_cfg, teacher.image_spec, teacher.encoder
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)  # not the config's 32

    with pytest.raises(UserError, match="its own tokenizer"):
        student_with_teacher_tower(student, OtherTeacher(), "text")
