"""export --format hf: transformers' CLIPModel loads the student and gives open_clip's embeddings."""
import json

import pytest
import torch

from clipdistill.cli import main as cli
from clipdistill.export_hf import check_maps_to_hf
from clipdistill.errors import UserError
from clipdistill.models import build_student
from clipdistill.models.load_any import load_model

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a large red circle left of a small blue square", "A photo of a dog!", "x"]


def _checkpoint(tmp_path, model):
    torch.manual_seed(3)
    student = build_student(model)
    with torch.no_grad():  # logit scale and all weights away from their initial values
        for p in student.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "step_00000005.pt"
    torch.save({"step": 5, "student": student.model.state_dict(), "config": {"student": {"model": model}}}, path)
    return path, student


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_transformers_clipmodel_gives_the_students_embeddings(tmp_path, quick_gelu):
    model = {"embed_dim": 48, "quick_gelu": quick_gelu,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
             "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    path, student = _checkpoint(tmp_path, model)
    assert cli(["export", str(path), str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = student.tokenizer(CAPTIONS)
    theirs = tokenizer(CAPTIONS, padding="max_length", max_length=24, truncation=True, return_tensors="pt")["input_ids"]
    for a, b in zip(ours, theirs):  # same tokens up to and including end-of-text (padding differs: 0 vs eot)
        end = int(a.argmax()) + 1
        assert a[:end].tolist() == b[:end].tolist()
    images = torch.randn(3, 3, 32, 32)
    student.model.eval()
    with torch.no_grad():
        image_hf = hf.get_image_features(pixel_values=images)
        text_hf = hf.get_text_features(input_ids=theirs)
        image_hf = image_hf if isinstance(image_hf, torch.Tensor) else image_hf.pooler_output
        text_hf = text_hf if isinstance(text_hf, torch.Tensor) else text_hf.pooler_output
        torch.testing.assert_close(image_hf, student.model.encode_image(images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(text_hf, student.model.encode_text(ours), atol=1e-5, rtol=1e-4)
        assert torch.allclose(hf.logit_scale, student.model.logit_scale)
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}
    assert processor["image_mean"] == pytest.approx(list(student.image_spec.mean))
    # clipdistill's own hf: loader (eval --model hf:DIR, teacher.source=hf) reads it back.
    loaded = load_model(f"hf:{tmp_path / 'hf'}").encoder
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), student.model.encode_image(images, normalize=True),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loaded.encode_text(loaded.tokenizer(CAPTIONS)),
                                   student.model.encode_text(ours, normalize=True), atol=1e-5, rtol=1e-4)


def test_architectures_without_a_clipmodel_equivalent_are_refused(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path, "tiny-rn")
    assert cli(["export", str(path), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "ResNet image tower" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="vision_cfg.ls_init_value has no transformers CLIPModel"):
        check_maps_to_hf({"embed_dim": 8, "vision_cfg": {"layers": 2, "ls_init_value": 1e-4}, "text_cfg": {}})
    with pytest.raises(UserError, match="text_cfg.hf_model_name"):
        check_maps_to_hf({"embed_dim": 8, "vision_cfg": {"layers": 2}, "text_cfg": {"hf_model_name": "bert"}})


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_the_exported_image_processor_resizes_as_the_student_does(tmp_path, resize_mode):
    from PIL import Image

    from clipdistill.data.transforms import eval_transform
    from clipdistill.export_hf import _save_image_processor
    from clipdistill.models.spec import ImageSpec

    spec = ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
                     resize_mode=resize_mode)
    _save_image_processor(transformers, tmp_path, spec)
    processor = transformers.CLIPImageProcessor.from_pretrained(str(tmp_path))
    # 96 x 48, a red stripe on the left sixth: a center crop loses it, a squash keeps it.
    pixels = torch.zeros(48, 96, 3, dtype=torch.uint8)
    pixels[..., 2] = 200
    pixels[:, :16] = torch.tensor([220, 10, 10], dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = eval_transform(spec)(image)
    assert theirs.shape == ours.shape == (3, 32, 32)
    assert (theirs - ours).abs().mean() < 0.02
    assert (ours[0, :, 0] > 0.5).all() == (resize_mode == "squash")  # the stripe is at the left edge only when squashed


def test_a_longest_edge_student_is_refused_for_hf(tmp_path):
    from clipdistill.export_hf import check_resize_maps_to_hf
    from clipdistill.models.spec import ImageSpec

    with pytest.raises(UserError, match="resize_mode longest.*--format openclip"):
        check_resize_maps_to_hf(ImageSpec(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="longest"))
