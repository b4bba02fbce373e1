"""CLIP-CID on WebDataset shards: cache the shards, curate the cache (keep.npy then lists sample keys),
train with data.keep on the same shards: only the kept samples are read, none counted as bad."""
import io
import tarfile

import numpy as np
import pytest
import torch

from cache.cache_helpers import make_cache
from clipdistill.cli import main
from clipdistill.data import SyntheticPairs
from clipdistill.data.loader import train_batches
from clipdistill.data.shards import KeptKeys, ShardPairs
from clipdistill.data.augmentation import Augmentation
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.models import load_teacher
from clipdistill.models.spec import ImageSpec

COPIES = {"b2": "a1", "c0": "a3"}  # key -> the key whose image and caption it repeats exactly
KEYS = [f"{shard}{i}" for shard in "abc" for i in range(4)]
SPEC = ImageSpec(16, (0.5,) * 3, (0.5,) * 3)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = SyntheticPairs(len(KEYS), seed=5)
    source = {key: pairs[n] for n, key in enumerate(KEYS)}
    for shard in "abc":
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for key in (k for k in KEYS if k[0] == shard):
                sample = source[COPIES.get(key, key)]
                for name, data in ((f"{key}.png", _png(sample["image"])), (f"{key}.txt", sample["caption"].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root)  # a folder of tars


@pytest.fixture(scope="module")
def curated(shards, tmp_path_factory):
    torch.manual_seed(7)
    teacher = load_teacher("openclip", model="tiny-teacher")
    out = tmp_path_factory.mktemp("curated")
    # Whole-image views: a copy's stored view 0 is the same pixels as its source's.
    make_cache(out / "cache", ShardPairs(shards), teacher, views=1, dataset_info={"kind": "webdataset"},
               scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert main(["curate", "--embeddings", str(out / "cache"), "--out", str(out / "cur"), "--clusters", "1",
                 "--threshold", "0.001", "--no-progress"]) == 0
    return out / "cur" / "keep.npy"


def test_curating_a_shard_cache_lists_sorted_keys_without_the_copies(curated):
    keep = np.load(curated)
    assert keep.dtype.kind == "U" and keep.tolist() == sorted(keep.tolist())
    for copy, source in COPIES.items():
        assert (copy in keep) != (source in keep)  # one of each identical pair stays
    assert set(KEYS) - set(COPIES) - set(COPIES.values()) <= set(keep.tolist())
    assert len(keep) == len(KEYS) - len(COPIES)


def test_training_on_the_shards_with_the_keep_list_reads_only_kept_keys(shards, curated):
    transform = PairedTransform({"student_image": SPEC}, Augmentation(scale=(1.0, 1.0)))
    batches = train_batches(ShardPairs(shards), transform=transform, tokenizers={}, batch_size=5, seed=0,
                            keep=str(curated))
    seen = [next(batches) for _ in range(6)]  # 30 samples: three passes over the 10 kept ones
    keys = [key for batch in seen for key in batch["key"]]
    assert set(keys) == set(np.load(curated).tolist())
    assert all(not batch["bad"] for batch in seen)  # dropped by the list, not counted as unreadable


def test_keep_list_kinds_that_cannot_apply_are_refused_in_one_line(shards, tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(3))
    with pytest.raises(UserError, match="lists dataset rows, but WebDataset samples have no rows"):
        KeptKeys.load(tmp_path / "rows.npy")
    np.save(tmp_path / "unsorted.npy", np.array(["b1", "a0"]))
    with pytest.raises(UserError, match="not sorted and unique"):
        KeptKeys.load(tmp_path / "unsorted.npy")
    np.save(tmp_path / "keys.npy", np.array(["a0", "b1"]))
    with pytest.raises(UserError, match="lists sample keys .* applies to webdataset data"):
        next(train_batches(SyntheticPairs(8, seed=0), transform=PairedTransform({"student_image": SPEC}),
                           tokenizers={}, batch_size=2, seed=0, keep=str(tmp_path / "keys.npy")))


def test_kept_keys_from_bytes_or_a_list_match_str_keys(tmp_path):
    np.save(tmp_path / "bytes.npy", np.array([b"a0", b"b1"]))
    assert "b1" in KeptKeys.load(tmp_path / "bytes.npy") and "c2" not in KeptKeys.load(tmp_path / "bytes.npy")
    assert "a0" in KeptKeys.load(["a0", "b1"])


def test_kept_keys_membership_matches_a_python_set():
    rng = np.random.default_rng(0)
    keys = np.unique(np.array([f"{n:09d}" for n in rng.integers(0, 10**6, 500)]))
    kept = KeptKeys(keys)
    probes = [f"{n:09d}" for n in rng.integers(0, 10**6, 2000)] + keys[:50].tolist() + ["", "zzz"]
    assert [p in kept for p in probes] == [p in set(keys.tolist()) for p in probes]
