"""open_clip model folders (``local-dir:DIR``) as teacher, student and eval model, offline, HF tokenizer included."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdistill.errors import UserError
from clipdistill.models import ImageSpec, build_student, load_teacher
from clipdistill.models.load_any import load_model

from real_teachers import CONTEXT, make_siglip_style_folder

pytest.importorskip("transformers")
CAPTIONS = ["a red circle left of the blue square", "two small squares", "the green triangle"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_siglip_style_folder(tmp_path_factory.mktemp("siglip_style") / "model")


@pytest.fixture(scope="module")
def reference(folder):
    """What open_clip itself builds from the folder: the oracle."""
    name = f"local-dir:{folder}"
    model = open_clip.create_model(name, pretrained_text=False).eval()
    return model, open_clip.get_tokenizer(name)


def test_teacher_from_a_folder_equals_open_clips_own_model(folder, reference):
    model, tokenizer = reference
    teacher = load_teacher("openclip", model=f"local-dir:{folder}")
    tokens = teacher.tokenizer(CAPTIONS)
    assert torch.equal(tokens, tokenizer(CAPTIONS)) and tokens.shape == (3, CONTEXT)
    images = torch.randn(2, 3, 32, 32)
    out = teacher(images, tokens[:2])
    with torch.no_grad():
        torch.testing.assert_close(out.image, F.normalize(model.encode_image(images), dim=-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.text, F.normalize(model.encode_text(tokens[:2]), dim=-1), rtol=1e-5, atol=1e-6)
    assert out.logit_bias.item() == pytest.approx(-7.5) and out.logit_scale.item() == pytest.approx(10.0, rel=1e-5)
    assert teacher.image_spec == ImageSpec(32, (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", resize_mode="squash")
    reference_cfg = open_clip.get_model_preprocess_cfg(model)  # what open_clip attached from the folder
    assert {k: reference_cfg[k] for k in ("interpolation", "resize_mode")} == {"interpolation": "bilinear",
                                                                                "resize_mode": "squash"}
    assert teacher.identity["path"] == str(folder) and len(teacher.identity["weights_sha256"]) == 64


def test_folder_as_student_and_as_eval_model(folder, reference):
    model, _ = reference
    student = build_student(f"local-dir:{folder}")
    for key, value in model.state_dict().items():
        assert torch.equal(student.model.state_dict()[key], value), key
    assert student.image_spec.resize_mode == "squash" and student.model_cfg["text_cfg"]["pool_type"] == "last"
    for spec in (f"local-dir:{folder}", str(folder)):
        loaded = load_model(spec)
        assert loaded.encoder.image_spec.resize_mode == "squash"
        assert loaded.encoder.logit_bias().item() == pytest.approx(-7.5)


def _copy(folder, target, skip=()):
    target.mkdir()
    for path in folder.iterdir():
        if path.name not in skip:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_or_wrong_pieces_are_one_line_errors(folder, tmp_path):
    with pytest.raises(UserError, match="holds its own weights: leave pretrained empty"):
        load_teacher("openclip", model=f"local-dir:{folder}", pretrained="laion2b_s34b_b79k")
    no_tokenizer = _copy(folder, tmp_path / "no_tokenizer", skip=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(UserError, match=r"no tokenizer file in the folder .*'offline/wordlevel'.*tokenizer\.json"):
        load_teacher("openclip", model=f"local-dir:{no_tokenizer}")
    no_weights = _copy(folder, tmp_path / "no_weights", skip=("open_clip_model.safetensors",))
    with pytest.raises(UserError, match="expected one weights file .*found none"):
        load_teacher("openclip", model=f"local-dir:{no_weights}")
    with pytest.raises(UserError, match="folder not found"):
        load_teacher("openclip", model=f"local-dir:{tmp_path / 'absent'}")
    wrong = _copy(folder, tmp_path / "wrong_weights", skip=("open_clip_model.safetensors",))
    torch.save(build_student("tiny").model.state_dict(), wrong / "open_clip_pytorch_model.bin")
    with pytest.raises(UserError, match="do not fit the model"):
        load_teacher("openclip", model=f"local-dir:{wrong}")
    no_preprocess = _copy(folder, tmp_path / "no_preprocess")
    config = json.loads((no_preprocess / "open_clip_config.json").read_text())
    del config["preprocess_cfg"]
    (no_preprocess / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="no complete preprocess_cfg .*set teacher.preprocess"):
        load_teacher("openclip", model=f"local-dir:{no_preprocess}")
    override = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    teacher = load_teacher("openclip", model=f"local-dir:{no_preprocess}", preprocess=override)
    assert teacher.image_spec.interpolation == "bicubic" and teacher.identity["preprocess"] == override
