"""Shard files (both encodings, every dtype) and the key index."""
import numpy as np
import pytest
import torch

from clipdistill.cache.index import KeyIndex, write_index
from clipdistill.cache.storage import DTYPES, check_encoding, read_meta, read_shard, write_shard
from clipdistill.errors import UserError

from cache_helpers import memory_bytes


@pytest.mark.parametrize("storage,dtype", [("safetensors", "fp16"), ("safetensors", "bf16"),
                                           ("safetensors", "fp32"), ("numpy", "fp16"), ("numpy", "fp32")])
def test_shard_round_trip(tmp_path, storage, dtype):
    tensors = {"image": torch.randn(3, 2, 5).to(DTYPES[dtype]),
               "view": torch.arange(30, dtype=torch.int32).reshape(3, 2, 5)}
    meta = {"keys": ["a", "bé", "c/1"], "skipped": {"corrupt_image": 1}}
    path = tmp_path / f"s.{'npz' if storage == 'numpy' else 'safetensors'}"
    write_shard(path, tensors, meta, storage)
    loaded, loaded_meta = read_shard(path)
    assert loaded_meta == meta and read_meta(path) == meta
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary name, renamed


def test_bf16_needs_safetensors_and_unknown_names_are_refused():
    with pytest.raises(UserError, match="bf16 needs cache.format=safetensors"):
        check_encoding("numpy", "bf16")
    with pytest.raises(UserError, match="unknown cache format 'pickle'"):
        check_encoding("pickle", "fp16")
    with pytest.raises(UserError, match="unknown cache dtype 'fp8'"):
        check_encoding("safetensors", "fp8")


def test_index_finds_rows_in_shard_order_and_marks_absent_keys(tmp_path):
    count = write_index(tmp_path, [["k2", "k0"], [], ["k1", "long-key-10"]])
    index = KeyIndex.load(tmp_path)
    assert count == 4 and len(index) == 4
    assert index.rows(["k0", "k1", "k2", "long-key-10", "nope", "k"]).tolist() == [1, 2, 0, 3, -1, -1]
    # row(): the loader's one-key lookup, a scalar search; before the first key, between keys, after the last
    for key in ["k0", "k1", "k2", "long-key-10", "nope", "k", "a", "zzz", "k10"]:
        assert index.row(key) == index.rows([key])[0], key
    (tmp_path / "empty").mkdir()
    write_index(tmp_path / "empty", [[]])
    assert KeyIndex.load(tmp_path / "empty").row("k0") == -1


def test_rewriting_the_same_index_leaves_the_mapped_file_in_place(tmp_path):
    write_index(tmp_path, [["k2", "k0"], ["k1"]])
    first = (tmp_path / "index.npz").stat().st_ino
    mapped = KeyIndex.load(tmp_path)
    write_index(tmp_path, [["k2", "k0"], ["k1"]])  # a rerun of a finished cache
    assert (tmp_path / "index.npz").stat().st_ino == first
    write_index(tmp_path, [["k2", "k0"], ["k1", "k3"]])  # other keys: replaced
    assert (tmp_path / "index.npz").stat().st_ino != first
    assert KeyIndex.load(tmp_path).rows(["k3"]).tolist() == [3] and mapped.rows(["k1"]).tolist() == [2]


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(UserError, match="'k1' occurs more than once"):
        write_index(tmp_path, [["k1", "k2"], ["k1"]])


def test_empty_index_finds_nothing(tmp_path):
    write_index(tmp_path, [[]])
    assert KeyIndex.load(tmp_path).rows(["a"]).tolist() == [-1]
    assert np.load(tmp_path / "index.npz", allow_pickle=False)["keys"].size == 0


def test_the_index_is_memory_mapped_and_older_or_compressed_ones_still_read(tmp_path):
    write_index(tmp_path, [["k2", "k0"], ["k1"]])
    index = KeyIndex.load(tmp_path)
    assert isinstance(index.sorted_keys, np.memmap) and isinstance(index.sorted_rows, np.memmap)
    assert index.rows(["k1", "k0", "x"]).tolist() == [2, 1, -1]
    keys, rows = index.sorted_keys.copy(), index.sorted_rows.copy()
    del index
    for save in (np.savez_compressed, np.savez):  # not mappable, or unaligned (older caches): read instead
        save(tmp_path / "index.npz", keys=keys, rows=rows)
        assert KeyIndex.load(tmp_path).rows(["k1", "k0", "x"]).tolist() == [2, 1, -1]


@pytest.mark.slow  # a timing/memory budget: meaningful on a quiet machine only
def test_loading_a_large_index_takes_no_private_memory(tmp_path):
    keys = [f"row{i:09d}" for i in range(1_000_000)]  # 48 MB of keys and 8 MB of rows
    write_index(tmp_path, [keys[::2], keys[1::2]])
    del keys
    before = memory_bytes("RssAnon")
    index = KeyIndex.load(tmp_path)
    assert index.rows(["row000000003", "row000999998"]).tolist() == [500_001, 499_999]
    # Mapped file pages are the page cache's, one copy for every process; np.load would add 56 MB here.
    assert memory_bytes("RssAnon") - before < 4 * 2**20
