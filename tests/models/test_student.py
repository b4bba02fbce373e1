"""Students: presets, open_clip names and inline configs build real open_clip models."""
import copy

import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from clipdistill.errors import UserError
from clipdistill.models import PRESETS, build_student, resolve_architecture, same_tokenizer
from clipdistill.models.presets import preset_config

CAPTIONS = ["a large red circle left of a small blue square", "a green triangle"]


@pytest.mark.parametrize("name", ["tiny", "tiny-teacher", "tiny-rn"])
def test_presets_build_and_encode(name):
    student = build_student(name)
    cfg = PRESETS[name]
    tokens = student.tokenizer(CAPTIONS)
    assert tokens.shape == (2, cfg["text_cfg"]["context_length"]) and tokens.dtype == torch.long
    images = torch.randn(2, 3, student.image_spec.size, student.image_spec.size)
    raw = student.model.encode_image(images, normalize=False)
    assert raw.shape == (2, cfg["embed_dim"]) == student.encode_text(tokens).shape
    # encode_image is the normalized version of the raw training features.
    torch.testing.assert_close(student.encode_image(images), raw / raw.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(student.encode_text(tokens).norm(dim=-1), torch.ones(2))
    assert student.embed_dim == cfg["embed_dim"]
    assert student.model_cfg == cfg and student.name == name


def test_preset_shapes_match_their_contract():
    assert isinstance(build_student("tiny").model.visual, VisionTransformer)
    assert isinstance(build_student("tiny-rn").model.visual, ModifiedResNet)
    # Teacher and student dims differ on purpose: projection heads must be exercised.
    assert PRESETS["tiny"]["embed_dim"] != PRESETS["tiny-teacher"]["embed_dim"]
    spec = build_student("tiny").image_spec
    assert (spec.size, spec.mean, spec.std, spec.interpolation) == (
        32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "bicubic")


def test_tokenizer_is_open_clips_bpe():
    student = build_student("tiny")
    torch.testing.assert_close(student.tokenizer(CAPTIONS), open_clip.tokenize(CAPTIONS, context_length=32))


def test_same_tokenizer_only_when_provably_equal():
    # The training loop tokenizes captions once for teacher and student when this says True.
    student, teacher = build_student("tiny").tokenizer, build_student("tiny-teacher").tokenizer
    assert student is not teacher and same_tokenizer(student, teacher)
    assert not same_tokenizer(student, open_clip.tokenizer.SimpleTokenizer(context_length=16))
    assert not same_tokenizer(student, open_clip.tokenizer.SimpleTokenizer(context_length=32, clean="whitespace"))
    assert not same_tokenizer(student, lambda captions: student(captions))  # unknown kind: never assumed equal


def test_inline_config_dict_builds_exactly_that_architecture():
    config = preset_config("tiny")
    config["vision_cfg"].update(width=96, layers=1, head_width=32)
    config["embed_dim"] = 48
    student = build_student(config)
    assert student.name.startswith("inline-")
    assert student.model.visual.transformer.width == 96 and len(student.model.visual.transformer.resblocks) == 1
    assert student.model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 48)
    assert student.model_cfg == config
    # The same content maps to the same registered name; different content to a different one.
    assert resolve_architecture(copy.deepcopy(config)) == student.name
    config["embed_dim"] = 40
    assert resolve_architecture(config) != student.name


def test_inline_config_without_open_clip_keys_is_a_user_error():
    with pytest.raises(UserError, match="text_cfg"):
        build_student({"embed_dim": 8, "vision_cfg": {}})


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError, match="unknown model 'ViT-B-61'.*ViT-B-16"):
        build_student("ViT-B-61")
    with pytest.raises(UserError, match="tiny-teacher"):
        build_student("tiny-teachr")


def test_open_clip_builtin_name_builds():
    # ViT-S-32 is the quickest full-size built-in to initialize (~1 s).
    student = build_student("ViT-S-32")
    assert student.model_cfg == open_clip.get_model_config("ViT-S-32")
    assert student.image_spec.size == 224
    with torch.no_grad():
        assert student.encode_image(torch.randn(1, 3, 224, 224)).shape == (1, student.embed_dim)


def test_patch_dropout_masks_in_training_only():
    torch.manual_seed(0)
    plain = build_student("tiny")
    masked = build_student("tiny", patch_dropout=0.75)
    masked.model.load_state_dict(plain.model.state_dict())
    assert masked.model_cfg["vision_cfg"]["patch_dropout"] == 0.75
    images = torch.randn(4, 3, 32, 32)
    masked.model.eval()
    torch.testing.assert_close(masked.model.encode_image(images), plain.model.encode_image(images))
    masked.model.train()
    # 16 patches, 4 kept: a different random subset each call changes the features.
    first, second = masked.model.encode_image(images), masked.model.encode_image(images)
    assert not torch.allclose(first, second)


def test_patch_dropout_on_a_resnet_is_a_user_error():
    with pytest.raises(UserError, match="ViT"):
        build_student("tiny-rn", patch_dropout=0.5)


def test_pretrained_file_loads_weights(tmp_path):
    source = build_student("tiny")
    path = tmp_path / "student.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, path)
    loaded = build_student("tiny", pretrained=str(path))
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_pretrained_file_of_another_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(build_student("tiny-teacher").model.state_dict(), path)
    with pytest.raises(UserError, match="do not fit the model: .*wrong shape"):
        build_student("tiny", pretrained=str(path))


def test_missing_pretrained_file_and_unknown_tag_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_student("tiny", pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="not an open_clip pretrained tag of ViT-B-32 .*laion2b_s34b_b79k"):
        build_student("ViT-B-32", pretrained="laion9000")


def test_weights_that_cannot_be_fetched_suggest_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    # Never touches the network: the download itself is replaced by a failing one.
    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(UserError, match="could not fetch open_clip weights ViT-B-32/laion2b_s34b_b79k "
                                        r"\(Network is unreachable\).*local path"):
        build_student("ViT-B-32", pretrained="laion2b_s34b_b79k")
