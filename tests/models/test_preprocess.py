"""Preprocessing: weights files get what open_clip's tables give their tag; every resize mode renders as open_clip's."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipdistill.data.augmentation import Augmentation
from clipdistill.data.transforms import PairedTransform, apply_view, eval_transform
from clipdistill.errors import UserError
from clipdistill.models import ImageSpec, build_student, load_teacher
from clipdistill.models.preprocess import resolve_for_file

HALF = (0.5, 0.5, 0.5)


def _non_square_image(width=48, height=30):
    # A gradient plus a bright stripe near the left edge: center crop, squash and pad all differ on it.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[:, :4] = 255
    return Image.fromarray(pixels)


def _open_clip_eval(spec: ImageSpec, image):
    transform = open_clip.image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std,
                                          resize_mode=spec.resize_mode, interpolation=spec.interpolation)
    return transform(image)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_every_resize_mode_renders_a_non_square_image_as_open_clip_does(mode, interpolation):
    image = _non_square_image()
    spec = ImageSpec(24, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), interpolation=interpolation, resize_mode=mode)
    expected = _open_clip_eval(spec, image)
    assert expected.shape == (3, 24, 24)
    torch.testing.assert_close(eval_transform(spec)(image), expected, rtol=0, atol=0)
    # A training view covering the whole image is that image, rendered in the spec's own mode.
    full_view = (0, 0, image.height, image.width, 0)
    torch.testing.assert_close(apply_view(image, full_view, {"m": spec})["m"], expected, rtol=0, atol=0)


def test_the_modes_really_differ_on_a_non_square_image():
    image = _non_square_image()
    rendered = {mode: eval_transform(ImageSpec(24, HALF, HALF, resize_mode=mode))(image)
                for mode in ("shortest", "longest", "squash")}
    for a, b in [("shortest", "squash"), ("shortest", "longest"), ("squash", "longest")]:
        assert (rendered[a] - rendered[b]).abs().max() > 0.1, (a, b)
    assert (rendered["longest"][:, 0] == -1.0).all()  # padded rows: fill 0 normalized by mean = std = 0.5


def test_one_sampled_crop_is_rendered_for_each_model_in_its_own_mode():
    image = _non_square_image(64, 40)
    student = ImageSpec(16, HALF, HALF, resize_mode="shortest")
    teacher = ImageSpec(24, (0.0,) * 3, (1.0,) * 3, interpolation="bilinear", resize_mode="squash")
    out = PairedTransform({"student_image": student, "teacher_image": teacher}, Augmentation(ratio=(0.5, 0.6)))(
        image, torch.Generator().manual_seed(1))
    top, left, h, w, _ = out["view"].tolist()
    assert w < h  # a tall crop (ratio < 1) of a wide image: shortest and squash must disagree
    crop = image.crop((left, top, left + w, top + h))
    torch.testing.assert_close(out["student_image"], _open_clip_eval(student, crop), rtol=0, atol=0)
    torch.testing.assert_close(out["teacher_image"], _open_clip_eval(teacher, crop), rtol=0, atol=0)


@pytest.mark.parametrize("arch, tag, expected", [
    # The issue's two checks, as open_clip 3.3.0's pretrained table gives them.
    ("PE-Core-T-16-384", "", (HALF, HALF, "bilinear", "squash")),
    ("MobileCLIP2-S0", "", ((0.0,) * 3, (1.0,) * 3, "bilinear", "shortest")),
    ("ViT-SO400M-14-SigLIP", "", (HALF, HALF, "bicubic", "squash")),
    # ViT-L-14's tags disagree: the tag named with the file decides.
    ("ViT-L-14", "laion2b_s32b_b82k", (HALF, HALF, "bicubic", "shortest")),
    ("ViT-H-14-quickgelu", "dfn5b", (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "bicubic", "squash")),
])
def test_a_weights_file_gets_the_preprocessing_of_its_tag(arch, tag, expected):
    fields = resolve_for_file(arch, tag=tag)
    mean, std, interpolation, resize_mode = expected
    assert fields == {"mean": tuple(mean), "std": tuple(std), "interpolation": interpolation,
                      "resize_mode": resize_mode}
    assert fields == resolve_for_file(arch, tag=tag or open_clip.list_pretrained_tags_by_model(arch)[0])


def test_where_the_tags_disagree_and_none_is_named_the_run_stops_naming_the_override():
    with pytest.raises(UserError, match=r"ViT-H-14's pretrained tags disagree .*dfn5b.*squash.*set teacher.preprocess"):
        resolve_for_file("ViT-H-14")
    override = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "longest"}
    assert resolve_for_file("ViT-H-14", override=override)["resize_mode"] == "longest"
    # A partial override completes what the tag gives.
    assert resolve_for_file("ViT-L-14", tag="openai", override={"resize_mode": "squash"})["resize_mode"] == "squash"


def test_an_undecidable_file_stops_before_its_weights_are_read(tmp_path):
    unreadable = tmp_path / "vit_h14.pt"
    unreadable.write_bytes(b"")  # reading it would fail: the preprocessing question comes first
    with pytest.raises(UserError, match="ViT-H-14's pretrained tags disagree"):
        load_teacher("checkpoint", model="ViT-H-14", path=str(unreadable))


def test_bad_tags_and_overrides_are_one_line_errors():
    with pytest.raises(UserError, match="'laion9000' is not an open_clip pretrained tag of PE-Core-T-16-384 .*meta"):
        resolve_for_file("PE-Core-T-16-384", tag="laion9000")
    with pytest.raises(UserError, match=r"teacher.preprocess has unknown keys \['crop'\]"):
        resolve_for_file("PE-Core-T-16-384", override={"crop": 1})
    with pytest.raises(UserError, match="teacher.preprocess.resize_mode 'fit' is not one of shortest, longest, squash"):
        resolve_for_file("PE-Core-T-16-384", override={"resize_mode": "fit"})
    with pytest.raises(UserError, match="student.preprocess.mean must be three numbers"):
        resolve_for_file("tiny", override={"mean": [0.5]}, setting="student.preprocess")


def test_an_architecture_without_tags_keeps_open_clips_defaults(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(build_student("tiny").model.state_dict(), path)
    loaded = build_student("tiny", pretrained=str(path))
    assert loaded.image_spec == ImageSpec(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    overridden = build_student("tiny", pretrained=str(path), preprocess={"resize_mode": "squash", "mean": HALF})
    assert overridden.image_spec.resize_mode == "squash" and overridden.image_spec.mean == HALF
    assert overridden.image_spec.std == open_clip.OPENAI_DATASET_STD


def test_tag_without_a_file_is_refused():
    with pytest.raises(UserError, match="tag 'meta' names what a weights file is, but no weights file"):
        build_student("PE-Core-T-16-384", tag="meta")


@pytest.mark.slow  # builds and saves a 70 M-parameter model (~20 s on 2 cores)
def test_pe_core_from_a_weights_file_is_preprocessed_as_its_meta_tag(tmp_path):
    model = open_clip.create_model("PE-Core-T-16-384", pretrained=None)
    path = tmp_path / "pe_core_t.pt"
    torch.save(model.state_dict(), path)
    teacher = load_teacher("checkpoint", model="PE-Core-T-16-384", path=str(path))
    assert teacher.image_spec == ImageSpec(384, HALF, HALF, interpolation="bilinear", resize_mode="squash")
    assert teacher.tokenizer.context_length == 32
    tagged = load_teacher("checkpoint", model="PE-Core-T-16-384", path=str(path), pretrained="meta")
    assert tagged.image_spec == teacher.image_spec and tagged.identity["pretrained"] == "meta"


def test_a_run_checkpoint_is_rebuilt_with_the_preprocessing_it_was_trained_with(tmp_path):
    from clipdistill.export import load_student
    from clipdistill.models.load_any import load_model
    from clipdistill.models.student import image_spec_fields

    student = build_student("tiny", preprocess={"resize_mode": "squash", "interpolation": "bilinear"})
    path = tmp_path / "step_00000001.pt"
    torch.save({"student": student.model.state_dict(),
                "config": {"student": {"model": "tiny", "pretrained": "",
                                       "preprocess": {"resize_mode": "squash", "interpolation": "bilinear"}}}}, path)
    assert load_model(str(path)).encoder.image_spec == student.image_spec
    assert load_student(path).image_spec == student.image_spec  # what `clipdistill export` writes as preprocess_cfg
    # A student started from a tag keeps that tag's preprocessing without its weights being fetched.
    assert image_spec_fields("ViT-L-14", "laion2b_s32b_b82k")["mean"] == HALF
