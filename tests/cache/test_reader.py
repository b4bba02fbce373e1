"""TeacherCache over several shards: rows gathered across shard boundaries, and nothing read until used."""
import pytest
import torch

from clipdistill.cache import TeacherCache
from clipdistill.cache.index import write_index
from clipdistill.cache.manifest import FORMAT, FORMAT_VERSION, write_manifest
from clipdistill.cache.storage import shard_path, write_shard

from cache_helpers import memory_bytes

VIEWS, DIM = 2, 8


def _write_cache(directory, shard_sizes, dim=DIM, seed=0):
    """A complete cache written by hand (no teacher): returns the (N, V, D) image and (N, D) text it holds."""
    generator = torch.Generator().manual_seed(seed)
    images, texts, keys, start = [], [], [], 0
    for number, size in enumerate(shard_sizes):
        image = torch.randn(size, VIEWS, dim, generator=generator).half()
        text = torch.randn(size, dim, generator=generator).half()
        shard_keys = [f"k{start + i}" for i in range(size)]
        view = torch.arange(start * VIEWS * 5, (start + size) * VIEWS * 5, dtype=torch.int32).reshape(size, VIEWS, 5)
        tensors = {"image": image, "text": text, "view": view,
                   "index": torch.arange(start, start + size)}
        write_shard(shard_path(directory, number, "safetensors"), tensors, {"keys": shard_keys}, "safetensors")
        images.append(image), texts.append(text), keys.append(shard_keys)
        start += size
    count = write_index(directory, keys)
    write_manifest(directory, {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "count": count,
                               "storage": "safetensors", "num_shards": len(shard_sizes), "dim": dim,
                               "augmentation": {"views": VIEWS}, "logit_scale": 100.0, "extras": {}})
    return torch.cat(images), torch.cat(texts)


def test_rows_are_gathered_across_shards_including_empty_ones(tmp_path):
    image, text = _write_cache(tmp_path, [3, 0, 4, 0, 0, 2, 5])
    cache = TeacherCache(tmp_path)
    assert len(cache) == 14 and cache.dataset_rows.tolist() == list(range(14))
    rows = torch.tensor([13, 0, 3, 2, 9, 7, 8, 3, 12, 6])
    views = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    assert torch.equal(cache.image_rows(rows, views), image[rows, views].float())
    assert torch.equal(cache.text_rows(rows), text[rows].float())
    assert torch.equal(cache.image, image) and torch.equal(cache.image_view(1), image[:, 1])
    assert torch.equal(cache.rows(["k9", "k0", "nope"]), torch.tensor([9, 0, -1]))


def test_stored_views_are_read_per_row_from_the_shards(tmp_path):
    _write_cache(tmp_path, [3, 0, 4, 2])
    cache = TeacherCache(tmp_path)
    views = cache.views()
    for row in range(9):
        expected = torch.arange(row * VIEWS * 5, (row + 1) * VIEWS * 5, dtype=torch.int32).reshape(VIEWS, 5)
        assert torch.equal(views.get(f"k{row}"), expected)
    assert views.get("nope") is None
    assert "view" not in vars(cache)  # no (N, V, 5) table was built for the lookups
    assert torch.equal(cache.view[7], cache.stored_views(7))
    for outside in (-1, 9):
        with pytest.raises(IndexError, match=f"row {outside} of a cache of 9 rows"):
            cache.stored_views(outside)


@pytest.mark.slow  # a timing/memory budget: meaningful on a quiet machine only
def test_opening_a_cache_reads_no_embeddings_until_rows_are_gathered(tmp_path):
    # 2 shards of 6 000 x 2 views x 1 024 fp16 = 48 MiB of image embeddings.
    image, text = _write_cache(tmp_path, [6000, 6000], dim=1024)
    expected = image[[5, 11_000], [0, 1]].float()
    del image, text
    before = memory_bytes("VmRSS")
    cache = TeacherCache(tmp_path)
    batch = cache.image_rows(torch.tensor([5, 11_000]), torch.tensor([0, 1]))
    assert torch.equal(batch, expected)
    assert memory_bytes("VmRSS") - before < 12 * 2**20  # pages of two rows and the small tables, not 48 MiB
