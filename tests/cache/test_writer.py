"""Writing a cache: contents against a naive oracle, resume after a kill, rank split, settings checks."""
import io
import tarfile

import pytest
import torch

from clipdistill.cache import TeacherCache, finalize, read_manifest, write_shards
from clipdistill.cache.storage import read_shard, shard_path
from clipdistill.cache.units import plan_units, units_of_rank
from clipdistill.cache.writer import view_generator
from clipdistill.data import ShardPairs
from clipdistill.data.transforms import apply_view, sample_view
from clipdistill.errors import UserError

from cache_helpers import NUM_SAMPLES, SHARD_SIZE, make_cache


def _shard_contents(directory, storage="safetensors"):
    manifest = read_manifest(directory)
    return [read_shard(shard_path(directory, n, storage)) for n in range(manifest["num_shards"])]


def _assert_same_cache(a, b):
    for (tensors_a, meta_a), (tensors_b, meta_b) in zip(_shard_contents(a), _shard_contents(b), strict=True):
        assert meta_a == meta_b
        assert tensors_a.keys() == tensors_b.keys()
        for name in tensors_a:
            assert torch.equal(tensors_a[name], tensors_b[name]), name


def test_cache_holds_the_teachers_embeddings_of_the_replayable_views(cache_dir, dataset, teacher):
    cache = TeacherCache(cache_dir)
    manifest = cache.manifest
    assert manifest["complete"] and manifest["count"] == NUM_SAMPLES and manifest["num_shards"] == 3
    assert manifest["dim"] == teacher.embed_dim and manifest["weights_fingerprint"]
    assert manifest["captions_per_sample"] == 1
    assert manifest["teacher"] == teacher.identity and manifest["image_spec"] == teacher.image_spec.as_dict()
    assert abs(manifest["logit_scale"] - float(teacher.logit_scale())) < 1e-6
    assert cache.image.shape == (NUM_SAMPLES, 2, teacher.embed_dim) and cache.image.dtype == torch.float16
    for index in (0, 9, 19):  # one sample from each shard, against a naive recomputation
        sample = dataset[index]
        row = int(cache.rows([sample["key"]]))
        generator = view_generator(0, sample["key"])
        views = [sample_view(64, 64, generator, (0.9, 1.0), (3 / 4, 4 / 3), False) for _ in range(2)]
        assert cache.view[row].tolist() == [list(v) for v in views]
        pixels = torch.stack([apply_view(sample["image"], v, {"t": teacher.image_spec})["t"] for v in views])
        assert torch.allclose(cache.image[row].float(), teacher.encode_image(pixels), atol=2e-3)
        expected_text = teacher.encode_text(teacher.tokenizer([sample["caption"]]))[0]
        assert torch.allclose(cache.text[row].float(), expected_text, atol=2e-3)
    assert cache.view[0, 0].tolist() != cache.view[0, 1].tolist()  # two different views, not one copied


class _KilledAfter:
    """Wraps a teacher; dies (like a SIGKILL'd process would, mid-unit) after ``calls`` image batches."""

    def __init__(self, teacher, calls):
        self.teacher, self.calls = teacher, calls

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def encode_image(self, pixels):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return self.teacher.encode_image(pixels)


def test_a_killed_run_resumes_to_the_same_cache(tmp_path, cache_dir, dataset, teacher):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # 3 batches of 4: shard 0 done, shard 1 half embedded
        make_cache(out, dataset, _KilledAfter(teacher, calls=3))
    assert shard_path(out, 0, "safetensors").exists() and not shard_path(out, 1, "safetensors").exists()
    assert not read_manifest(out)["complete"]
    (out / ".shard_000001.safetensors.999.tmp").write_bytes(b"partial")  # a kill during the write itself
    with pytest.raises(UserError, match="incomplete"):
        TeacherCache(out)
    before = shard_path(out, 0, "safetensors").stat().st_mtime_ns
    manifest = make_cache(out, dataset, teacher)
    assert manifest["complete"] and manifest["count"] == NUM_SAMPLES
    assert shard_path(out, 0, "safetensors").stat().st_mtime_ns == before  # the finished shard was not redone
    assert not list(out.glob(".*.tmp"))
    _assert_same_cache(out, cache_dir)


def test_ranks_split_the_shards_with_no_gap_and_no_overlap(tmp_path, cache_dir, dataset, teacher):
    units = plan_units(dataset, SHARD_SIZE)
    assert [list(u.positions) for u in units] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    out = tmp_path / "two_ranks"
    first = make_cache(out, dataset, teacher, rank=1, world_size=2)  # rank 1 first: 1 shard, cache not complete
    assert first is None and not read_manifest(out)["complete"]
    manifest = make_cache(out, dataset, teacher, rank=0, world_size=2)
    assert manifest["complete"]
    mine = [[u.number for u in units_of_rank(units, r, 2)] for r in range(2)]
    assert mine == [[0, 2], [1]]
    _assert_same_cache(out, cache_dir)  # = the single-process cache, shard for shard


def test_every_unit_is_written_by_exactly_one_of_three_ranks(dataset):
    units = plan_units(dataset, 3)  # 7 units
    owned = sorted(u.number for r in range(3) for u in units_of_rank(units, r, 3))
    assert owned == list(range(7))


def test_resuming_with_other_settings_is_refused(tmp_path, dataset, teacher):
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        make_cache(out, dataset, _KilledAfter(teacher, calls=1))
    with pytest.raises(UserError, match="augmentation.views: cache has 2, run has 3"):
        make_cache(out, dataset, teacher, views=3)


def test_numpy_format_holds_the_same_values(tmp_path, cache_dir, dataset, teacher):
    make_cache(tmp_path / "np", dataset, teacher, storage="numpy")
    a, b = TeacherCache(tmp_path / "np"), TeacherCache(cache_dir)
    assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text) and torch.equal(a.view, b.view)
    assert (tmp_path / "np" / "shard_000000.npz").exists()


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for name, data in ((f"{key}.png", image), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_input_gives_one_cache_shard_per_tar(tmp_path, dataset, teacher):
    def png(i):
        buffer = io.BytesIO()
        dataset[i]["image"].save(buffer, format="PNG")
        return buffer.getvalue()

    _write_tar(tmp_path / "000.tar", [(f"a{i}", png(i), dataset[i]["caption"]) for i in range(3)])
    _write_tar(tmp_path / "001.tar", [(f"b{i}", png(i), dataset[i]["caption"]) for i in range(2)]
               + [("broken", b"not an image", "x")])
    shards = ShardPairs(str(tmp_path / "{000..001}.tar"))
    manifest = make_cache(tmp_path / "c", shards, teacher, views=1, dataset_info={"kind": "webdataset"})
    assert manifest["num_shards"] == 2 and manifest["count"] == 5 and manifest["skipped"] == {"corrupt_image": 1}
    cache = TeacherCache(tmp_path / "c")
    assert cache.rows(["a0", "a2", "b1", "broken"]).tolist() == [0, 2, 4, -1]
    assert torch.equal(cache.text[4], cache.text[1])  # b1 and a1 carry the same caption
    assert cache.view[:, 0, 2:4].min() >= 58  # views of the 64 px image at scale >= 0.9 (sides >= ~0.82 * 64)


def test_write_shards_skips_units_already_on_disk(tmp_path, cache_dir, dataset, teacher):
    units = plan_units(dataset, SHARD_SIZE)
    for n in range(3):
        (tmp_path / shard_path(tmp_path, n, "safetensors").name).write_bytes(
            shard_path(cache_dir, n, "safetensors").read_bytes())
    written = write_shards(dataset, teacher, tmp_path, units, views=2, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3),
                           hflip=False, seed=0, dtype="fp16", storage="safetensors", batch_size=4, progress=False)
    assert written == []
    (tmp_path / "manifest.json").write_text((cache_dir / "manifest.json").read_text())
    assert finalize(tmp_path)["count"] == NUM_SAMPLES


def test_workers_render_a_whole_batch_ahead_and_write_the_same_cache(tmp_path, cache_dir, dataset, teacher):
    from clipdistill.cache.writer import rendering_prefetch

    # batch 64 over 3 workers: 22 items each in flight (ceil), never below torch's default of 2; none without workers
    assert rendering_prefetch(64, 3) == {"prefetch_factor": 22}
    assert rendering_prefetch(4, 8) == {"prefetch_factor": 2}
    assert rendering_prefetch(64, 0) == {}
    make_cache(tmp_path / "workers", dataset, teacher, workers=2)
    _assert_same_cache(cache_dir, tmp_path / "workers")
