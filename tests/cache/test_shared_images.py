"""Caption files with several rows per image (Flickr, COCO): the cache embeds each image of a shard once."""
import pytest
import torch
from safetensors.torch import save_file

from clipdistill.cache import TeacherCache, read_manifest, write_cache
from clipdistill.cache.manifest import write_manifest
from clipdistill.cache.storage import read_shard, shard_path
from clipdistill.cache.writer import view_generator
from clipdistill.data import CsvPairs, SyntheticPairs, train_batches
from clipdistill.data.transforms import PairedTransform, apply_view, sample_view
from clipdistill.targets import CachedTeacherTargets, LiveTeacherTargets

# Rows (image, caption). Shard size 6: shard 0 = rows 0-5 (images a, b, c; a comes back at row 5),
# shard 1 = rows 6-10 (b again: a new shard embeds it anew; a missing file named twice; d twice).
ROWS = [("a", "a one"), ("a", "a two"), ("a", "a three"), ("b", "b one"), ("c", "c one"), ("a", "a four"),
        ("b", "b two"), ("gone", "lost one"), ("gone", "lost two"), ("d", "d one"), ("d", "d two")]
SHARD_SIZE, VIEWS = 6, 2


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    directory = tmp_path_factory.mktemp("flickr_like")
    scenes = SyntheticPairs(4, seed=1, image_size=48)
    for i, name in enumerate("abcd"):
        scenes[i]["image"].save(directory / f"{name}.png")
    lines = ["filepath\ttitle", *(f"{image}.png\t{caption}" for image, caption in ROWS)]
    (directory / "captions.tsv").write_text("\n".join(lines) + "\n")
    return CsvPairs(directory / "captions.tsv")


class _CountingTeacher:
    """Counts the images the teacher embeds (each view of each image is one)."""

    def __init__(self, teacher):
        self.teacher, self.images, self.batches = teacher, 0, []

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def encode_image(self, pixels):
        self.images += len(pixels)
        self.batches.append(len(pixels) // VIEWS)
        return self.teacher.encode_image(pixels)


def _write(directory, captions, teacher, **kwargs):
    return write_cache(captions, teacher, directory, dataset_info={"kind": "csv", "path": str(captions.path)},
                       views=VIEWS, shard_size=SHARD_SIZE, batch_size=2, progress=False, **kwargs)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory, captions, teacher):
    counting = _CountingTeacher(teacher)
    directory = tmp_path_factory.mktemp("shared_cache")
    _write(directory, captions, counting)
    return directory, counting.images


def test_each_image_of_a_shard_is_stored_and_embedded_once(shared_cache, captions):
    directory, embedded = shared_cache
    manifest = read_manifest(directory)
    assert manifest["count"] == 9 and manifest["images"] == 5  # a, b, c | b, d
    assert manifest["skipped"] == {"missing_file": 2}  # both rows of the missing file, one decode attempt
    assert embedded == 5 * VIEWS
    first, second = (read_shard(shard_path(directory, n, "safetensors"))[0] for n in range(2))
    assert first["image"].shape[0] == 3 and first["image_row"].tolist() == [0, 0, 0, 1, 2, 0]
    assert second["image"].shape[0] == 2 and second["image_row"].tolist() == [0, 1, 1]
    assert first["text"].shape[0] == 6 and second["text"].shape[0] == 3


def test_rows_of_one_image_share_its_views_and_embeddings_against_an_oracle(shared_cache, captions, teacher):
    cache = TeacherCache(shared_cache[0])
    first_key = {}  # image -> key of its first row in the shard: the stored views come from that key
    for position, (image, caption) in enumerate(ROWS):
        if image == "gone":
            continue
        sample = captions[position]
        shard_image = (position // SHARD_SIZE, image)
        first_key.setdefault(shard_image, sample["key"])
        generator = view_generator(0, first_key[shard_image])
        views = [sample_view(48, 48, generator, (0.9, 1.0), (3 / 4, 4 / 3), False) for _ in range(VIEWS)]
        row = cache.rows([sample["key"]])
        assert cache.view[int(row)].tolist() == [list(v) for v in views], position
        pixels = torch.stack([apply_view(sample["image"], v, {"t": teacher.image_spec})["t"] for v in views])
        expected = teacher.encode_image(pixels)
        for v in range(VIEWS):
            got = cache.image_rows(row, torch.tensor([v]))[0]
            assert torch.allclose(got, expected[v], atol=2e-3), (position, v)
        text = teacher.encode_text(teacher.tokenizer([caption]))[0]
        assert torch.allclose(cache.text_rows(row)[0], text, atol=2e-3)
    rows_of_a = cache.rows([captions.text_of(i)["key"] for i in (0, 1, 2, 5)])
    assert torch.equal(cache.image[rows_of_a[0]], cache.image[rows_of_a[3]])  # shared, as read back whole
    assert not torch.equal(cache.text[rows_of_a[0]], cache.text[rows_of_a[1]])


def test_training_targets_from_shared_images_equal_the_live_teachers(shared_cache, captions, teacher):
    cache = TeacherCache(shared_cache[0])
    specs, tokenizers = {"teacher_image": teacher.image_spec}, {"teacher_text": teacher.tokenizer}
    batch = next(train_batches(captions, transform=PairedTransform(specs), tokenizers=tokenizers, batch_size=9,
                               seed=2, views=cache.views()))
    images = [ROWS[int(i)][0] for i in batch["index"]]
    assert len(images) == 9 and len(set(images)) < 9  # rows sharing an image are in the batch
    live = LiveTeacherTargets(teacher, torch.device("cpu"))(batch)
    cached = CachedTeacherTargets(cache, torch.device("cpu"))(batch)
    assert torch.allclose(cached.image, live.image, atol=2e-3) and torch.allclose(cached.text, live.text, atol=2e-3)


class _KilledAfter(_CountingTeacher):
    def __init__(self, teacher, calls):
        super().__init__(teacher)
        self.calls = calls

    def encode_text(self, tokens):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return self.teacher.encode_text(tokens)


def test_a_killed_run_resumes_to_the_same_shared_cache(tmp_path, shared_cache, captions, teacher):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # 3 text batches of 2 rows: shard 0 written, shard 1 begun
        _write(out, captions, _KilledAfter(teacher, calls=3))
    assert shard_path(out, 0, "safetensors").exists() and not shard_path(out, 1, "safetensors").exists()
    _write(out, captions, teacher)
    for n in range(2):
        (resumed, resumed_meta), (whole, whole_meta) = (read_shard(shard_path(d, n, "safetensors"))
                                                       for d in (out, shared_cache[0]))
        assert resumed_meta == whole_meta and resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[name], whole[name]) for name in whole)


def test_a_format_1_cache_one_image_entry_per_row_is_still_read(tmp_path, shared_cache):
    shared = TeacherCache(shared_cache[0])
    old = tmp_path / "v1"
    old.mkdir()
    for f in shared_cache[0].iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    for n in range(2):  # what format 1 wrote: image expanded per row, no image_row
        tensors, meta = read_shard(shard_path(old, n, "safetensors"))
        tensors["image"] = tensors["image"][tensors.pop("image_row")].contiguous()
        save_file(tensors, str(shard_path(old, n, "safetensors")), metadata={"meta": __import__("json").dumps(meta)})
    manifest = read_manifest(old)
    manifest["format_version"] = 1
    write_manifest(old, manifest)
    v1 = TeacherCache(old)
    rows, views = torch.arange(9), torch.tensor([0, 1] * 4 + [0])
    assert torch.equal(v1.image_rows(rows, views), shared.image_rows(rows, views))
    assert torch.equal(v1.image, shared.image)


def test_image_batches_fill_up_with_images_not_with_caption_rows(tmp_path, captions, teacher):
    # batch_size 2: shard 0 embeds images a, b then c; shard 1 embeds b, d ("gone" is unreadable).
    # Flushed with the caption rows instead, shard 0 would send a, b and c one by one.
    counting = _CountingTeacher(teacher)
    _write(tmp_path, captions, counting)
    assert counting.batches == [2, 1, 2]
