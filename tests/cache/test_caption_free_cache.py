"""A teacher cache of caption-free data: image embeddings, (n, 0) text rows, replayed like any other cache."""
import torch
from PIL import Image

from cache_helpers import make_cache
from clipdistill.cache.reader import TeacherCache
from clipdistill.data import build_dataset, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.models import build_student
from clipdistill.targets import CachedTeacherTargets, LiveTeacherTargets


def test_cached_image_targets_equal_the_live_teachers_and_text_is_empty(tmp_path, teacher):
    for i in range(10):
        (tmp_path / "photos" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 26), (25 * i, 100, 200 - 15 * i)).save(tmp_path / "photos" / f"c{i % 2}" / f"{i}.png")
    dataset = build_dataset("folder", path=str(tmp_path / "photos"))
    make_cache(tmp_path / "cache", dataset, teacher, shard_size=4)  # 3 shards: rows gathered across shards
    cache = TeacherCache(tmp_path / "cache")
    assert len(cache) == 10 and cache.text.shape == (10, 0) and cache.manifest["captions_per_sample"] == 0
    student = build_student("tiny")
    specs = {"student_image": student.image_spec, "teacher_image": teacher.image_spec}
    batch = next(train_batches(dataset, transform=PairedTransform(specs), tokenizers={"student_text": student.tokenizer},
                               batch_size=8, seed=0, views=cache.views()))
    assert "student_text" not in batch
    cached = CachedTeacherTargets(cache, torch.device("cpu"))(batch)
    live = LiveTeacherTargets(teacher, torch.device("cpu"))(batch)
    assert cached.text.shape == live.text.shape == (8, 0)
    assert torch.allclose(cached.image, live.image, atol=2e-3)
