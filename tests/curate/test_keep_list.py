"""Training on a curated keep list (data.keep): the loader draws only the kept rows, all of them."""
import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from clipdistill import config as config_lib
from clipdistill.data import SyntheticPairs, train_batches
from clipdistill.data.shards import ShardPairs
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.models.spec import ImageSpec

TRANSFORM = PairedTransform({"student_image": ImageSpec(16, (0.5,) * 3, (0.5,) * 3)})
TOKENIZERS = {"student_text": SimpleTokenizer(context_length=16)}


def indices(dataset, n_batches, **kwargs):
    batches = train_batches(dataset, transform=TRANSFORM, tokenizers=TOKENIZERS, seed=0, batch_size=4, **kwargs)
    return [next(batches)["index"].tolist() for _ in range(n_batches)]


def test_keep_file_restricts_rows_and_covers_them_each_epoch(tmp_path):
    keep = np.array([3, 7, 8, 15, 20, 21, 30, 31], dtype=np.int64)
    np.save(tmp_path / "keep.npy", keep)
    drawn = indices(SyntheticPairs(40), 4, keep=str(tmp_path / "keep.npy"))
    assert sorted(drawn[0] + drawn[1]) == keep.tolist()  # epoch 1: every kept row once
    assert sorted(drawn[2] + drawn[3]) == keep.tolist()  # epoch 2 as well, in another order
    assert drawn[:2] != drawn[2:]


def test_keep_within_subset_and_across_ranks():
    keep = np.arange(0, 40, 2)  # even rows; subset 16 leaves 0, 2, ..., 14
    rank0 = indices(SyntheticPairs(40), 1, keep=keep, subset=16, rank=0, world_size=2)[0]
    rank1 = indices(SyntheticPairs(40), 1, keep=keep, subset=16, rank=1, world_size=2)[0]
    assert sorted(rank0 + rank1) == list(range(0, 16, 2))


def test_bad_keep_lists_and_shards_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.keep must list integer rows"):
        indices(SyntheticPairs(10), 1, keep=np.array([1, 2, 3, 4, 12]))
    with pytest.raises(UserError, match="cannot read"):
        indices(SyntheticPairs(10), 1, keep=str(tmp_path / "missing.npy"))
    (tmp_path / "x.tar").write_bytes(b"")  # never read: the keep list is refused first
    with pytest.raises(UserError, match="WebDataset samples have no rows"):
        train_batches(ShardPairs(str(tmp_path / "x.tar")), transform=TRANSFORM, tokenizers=TOKENIZERS, seed=0,
                      batch_size=4, keep=np.arange(4))


def test_config_has_data_keep():
    assert config_lib.load(None, ["data.keep=curated/keep.npy"]).data.keep == "curated/keep.npy"
