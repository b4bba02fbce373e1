"""Caption-free data: an image folder and WebDataset shards without .txt give batches of images only."""
import io
import tarfile

import pytest
import torch
from PIL import Image

from clipdistill import build
from clipdistill import config as config_lib
from clipdistill.data import ShardPairs, build_dataset, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.models.spec import ImageSpec

TRANSFORM = PairedTransform({"student_image": ImageSpec(16, (0.5,) * 3, (0.5,) * 3)})


def never(captions):
    raise AssertionError("caption-free data must not be tokenized")


def write_folder(root, layout: dict[str, int]):
    for i, (folder, count) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            Image.new("RGB", (20, 24), (30 * i, 20 * j, 90)).save(root / folder / f"{j}.png")
    return root


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_textless_shard(path, keys):
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            data = png((10 * i, 50, 90))
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_folder_tree_lists_its_images_with_class_labels(tmp_path):
    root = write_folder(tmp_path / "photos", {"dog": 2, "cat": 3})
    (root / "notes.txt").write_text("not an image")
    data = build_dataset("folder", path=str(root))
    assert len(data) == 5 and data.classes == ["cat", "dog"] and not data.has_captions
    assert [data[i]["key"] for i in range(5)] == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert data.labels == [0, 0, 0, 1, 1]
    sample = data[3]
    assert sample["caption"] is None and sample["image"].size == (20, 24) and sample["image"].mode == "RGB"


def test_a_flat_folder_has_no_labels_and_bad_folders_are_one_line(tmp_path):
    root = write_folder(tmp_path, {"flat": 2})
    assert build_dataset("folder", path=str(root / "flat")).labels == [-1, -1]
    with pytest.raises(UserError, match="image folder not found"):
        build_dataset("folder", path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        build_dataset("folder", path=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="needs data.path"):
        build_dataset("folder")


def test_folder_batches_carry_images_and_no_tokens(tmp_path):
    data = build_dataset("folder", path=str(write_folder(tmp_path / "p", {"a": 4, "b": 4})))
    batches = train_batches(data, transform=TRANSFORM, tokenizers={"student_text": never, "teacher_text": never},
                            batch_size=4, seed=0)
    seen = []
    for _ in range(2):
        batch = next(batches)
        assert batch["student_image"].shape == (4, 3, 16, 16)
        assert "student_text" not in batch and "teacher_text" not in batch and batch["caption"] == [None] * 4
        seen += batch["key"]
    assert sorted(seen) == sorted(data[i]["key"] for i in range(8))  # one epoch: every image once


def test_shards_without_txt_are_images_only(tmp_path):
    keys = [f"{i:04d}" for i in range(6)]
    write_textless_shard(tmp_path / "00000.tar", keys)
    data = ShardPairs(str(tmp_path / "00000.tar"))
    assert not data.has_captions and "images only" in repr(data)
    items = []
    for item in data.stream(seed=0, reader=0, readers=1):
        if item["epoch"] > 0:
            break
        items.append(item)
    assert sorted(i["key"] for i in items) == keys and all(i["caption"] is None for i in items)
    batch = next(train_batches(data, transform=TRANSFORM, tokenizers={"student_text": never}, batch_size=3, seed=0))
    assert batch["student_image"].shape == (3, 3, 16, 16) and "student_text" not in batch


def test_shards_with_txt_still_count_a_missing_caption(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in (("a.png", png((1, 2, 3))), ("a.txt", b"a caption"), ("b.png", png((4, 5, 6)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = ShardPairs(str(tmp_path / "00000.tar"))
    assert data.has_captions
    first_epoch = []
    for item in data.stream(seed=0, reader=0, readers=1):
        if item["epoch"] > 0:
            break
        first_epoch.append(item.get("bad") or item["caption"])
    assert sorted(first_epoch) == ["a caption", "missing_caption"]


def test_caption_free_runs_refuse_text_losses_and_a_student_text_tower(tmp_path):
    data = build_dataset("folder", path=str(write_folder(tmp_path / "p", {"a": 2})))
    teacher_text = config_lib.load(None, ["student.text_tower=teacher"]).student
    build.check_captions(data, {"fd": {}, "crd_image": {}}, teacher_text)  # image-only terms: fine
    for loss in ("clip", "crd", "siglip", "icl"):
        with pytest.raises(UserError, match=f"loss '{loss}' needs captions.*image-only losses \\(crd_image, fd, mfd\\)"):
            build.check_captions(data, {"fd": {}, loss: {}}, teacher_text)
    with pytest.raises(UserError, match="has no captions: set student.text_tower=teacher"):
        build.check_captions(data, {"fd": {}}, config_lib.load(None, []).student)
    build.check_captions(build_dataset("synthetic", num_samples=4), {"clip": {}}, config_lib.load(None, []).student)
    hybrid = config_lib.load(None, ["teacher.source=cache", "teacher.cache_mode=hybrid"]).teacher
    with pytest.raises(UserError, match="cache_mode=hybrid is not supported"):
        build.check_captions(data, {"fd": {}}, teacher_text, hybrid)


def test_the_teacher_embeds_images_only_without_tokens():
    from clipdistill.models import load_teacher
    from clipdistill.targets import LiveTeacherTargets

    teacher = load_teacher("openclip", model="tiny-teacher")
    images = torch.randn(3, 3, 32, 32)
    embeddings = LiveTeacherTargets(teacher, torch.device("cpu"))({"teacher_image": images, "caption": [None] * 3})
    assert embeddings.text.shape == (3, 0)
    torch.testing.assert_close(embeddings.image, teacher.encode_image(images))
