"""WebDataset shards as img2dataset writes them: splitting across ranks and workers, bad samples, epochs."""
import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image

from clipdistill.data import ShardPairs, build_dataset, expand_shards, train_batches
from clipdistill.data.augmentation import Augmentation
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.models.spec import ImageSpec

TRANSFORM = PairedTransform({"student_image": ImageSpec(16, (0.5,) * 3, (0.5,) * 3)})


def lengths(captions):
    return torch.tensor([[len(c)] for c in captions])


def encoded(color, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_members(key, image=b"", image_ext="jpg", caption=None):
    members = {}
    if image:
        members[f"{key}.{image_ext}"] = image
    if caption is not None:
        members[f"{key}.txt"] = caption.encode()
    members[f"{key}.json"] = json.dumps({"key": key}).encode()
    return members


@pytest.fixture
def shards(tmp_path):
    """4 shards x 6 samples; one corrupt image, one without caption, one without image: 21 good."""
    folder = tmp_path / "shards"
    folder.mkdir()
    good, formats = [], [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    for shard in range(4):
        members = {}
        for i in range(6):
            key = f"{shard:05d}{i:04d}"
            ext, fmt = formats[i % 3]
            image, caption = encoded((40 * shard, 40 * i, 100), fmt), f"sample {key}"
            if (shard, i) == (1, 2):
                image = b"\xff\xd8\xff\xe0 garbage"
            elif (shard, i) == (2, 3):
                caption = None
            elif (shard, i) == (3, 5):
                image = b""
            else:
                good.append(key)
            members.update(sample_members(key, image, ext, caption))
        write_tar(folder / f"{shard:05d}.tar", members)
    return folder, sorted(good)


EXPECTED_BAD = {"corrupt_image": 1, "missing_caption": 1, "missing_image": 1}


def one_epoch(data, reader, readers, seed=0):
    keys, bad = [], Counter()
    for item in data.stream(seed=seed, reader=reader, readers=readers):
        if item["epoch"] > 0:
            return keys, bad
        if "bad" in item:
            bad[item["bad"]] += 1
        else:
            keys.append(item["key"])
            assert item["caption"] == f"sample {item['key']}" and item["image"].mode == "RGB"


def test_shard_patterns_and_folders(shards):
    folder, _ = shards
    pattern = str(folder / "{00000..00003}.tar")
    assert expand_shards(pattern) == [str(folder / f"{i:05d}.tar") for i in range(4)]
    assert expand_shards(str(folder)) == expand_shards(pattern)
    assert len(build_dataset("webdataset", path=pattern).shards) == 4
    with pytest.raises(UserError, match="2 of 6 shards not found, first: .*00004.tar"):
        expand_shards(str(folder / "{00000..00005}.tar"))
    with pytest.raises(UserError, match="no .tar shards"):
        expand_shards(str(folder.parent))


@pytest.mark.parametrize("readers", [1, 4, 6])  # 6 > 4 shards: readers share shards sample by sample
def test_one_epoch_gives_every_good_sample_to_exactly_one_reader(shards, readers):
    folder, good = shards
    data = ShardPairs(str(folder))
    epochs = [one_epoch(data, reader, readers) for reader in range(readers)]
    keys = [key for reader_keys, _ in epochs for key in reader_keys]
    assert sorted(keys) == good
    assert sum((bad for _, bad in epochs), Counter()) == EXPECTED_BAD


def test_epochs_reshuffle_and_seeds_reproduce(shards):
    data = ShardPairs(str(shards[0]))

    def first_two_epochs(seed):
        stream = data.stream(seed=seed, reader=0, readers=1)
        items = [next(stream) for _ in range(48)]
        return [[item.get("key") for item in items if item["epoch"] == e] for e in (0, 1)]

    epoch0, epoch1 = first_two_epochs(0)
    assert sorted(filter(None, epoch0)) == sorted(filter(None, epoch1)) and epoch0 != epoch1
    assert first_two_epochs(0) == [epoch0, epoch1]


def test_loader_with_two_ranks_and_two_workers_covers_each_good_key_once(shards):
    folder, good = shards
    data = build_dataset("webdataset", path=str(folder / "{00000..00003}.tar"))
    seen = []
    for rank in (0, 1):
        batches = train_batches(data, transform=TRANSFORM, tokenizers={"student_text": lengths}, batch_size=1,
                                seed=0, rank=rank, world_size=2, workers=2)
        for _ in range(30):  # > one epoch of this rank's (at most 12) samples
            batch = next(batches)
            assert batch["index"].tolist() == [-1] and batch["student_image"].shape == (1, 3, 16, 16)
            assert batch["student_text"].tolist() == [[len(batch["caption"][0])]]
            if batch["epoch"] == 0:
                seen.extend(batch["key"])
    assert sorted(seen) == good


def test_loader_skips_bad_samples_and_keeps_batches_full(shards):
    data = ShardPairs(str(shards[0]))
    batches = train_batches(data, transform=TRANSFORM, tokenizers={}, batch_size=5, seed=0)
    taken = [next(batches) for _ in range(21)]  # 5 epochs of 21 good samples
    assert all(len(b["key"]) == 5 and b["student_image"].shape[0] == 5 for b in taken)
    assert sum((Counter(b["bad"]) for b in taken), Counter()) == {k: 5 * v for k, v in EXPECTED_BAD.items()}
    assert Counter(k for b in taken for k in b["key"]) == {key: 5 for key in shards[1]}


def test_augmentation_is_reproducible(shards):
    data = ShardPairs(str(shards[0]))

    def first_batch():
        transform = PairedTransform(TRANSFORM.specs, Augmentation(scale=(0.3, 1.0)))
        batches = train_batches(data, transform=transform, tokenizers={},
                                batch_size=4, seed=3)
        return next(batches)

    a, b = first_batch(), first_batch()
    assert a["key"] == b["key"] and torch.equal(a["view"], b["view"]) and torch.equal(a["student_image"],
                                                                                      b["student_image"])
    assert len({tuple(v) for v in a["view"].tolist()}) > 1


def test_resume_does_not_replay_the_start_of_the_run(shards):
    data = ShardPairs(str(shards[0]))

    def keys(start_step):
        batches = train_batches(data, transform=TRANSFORM, tokenizers={}, batch_size=21, seed=0, start_step=start_step)
        return next(batches)["key"]

    assert keys(0) == keys(0) and keys(5) != keys(0)


def test_unusable_shards_raise_one_line_user_errors(tmp_path):
    write_tar(tmp_path / "bad.tar", {f"{i}.jpg": b"garbage" for i in range(3)} | {f"{i}.txt": b"c" for i in range(3)})
    batches = train_batches(ShardPairs(str(tmp_path / "bad.tar")), transform=TRANSFORM, tokenizers={}, batch_size=2,
                            seed=0, workers=1)
    with pytest.raises(UserError, match="unusable samples in a row") as err:
        next(batches)
    assert "\n" not in str(err.value)
    write_tar(tmp_path / "empty.tar", {})
    with pytest.raises(UserError, match="no samples"):
        next(train_batches(ShardPairs(str(tmp_path / "empty.tar")), transform=TRANSFORM, tokenizers={}, batch_size=2,
                           seed=0))
    with pytest.raises(UserError, match="subset"):
        train_batches(ShardPairs(str(tmp_path / "empty.tar")), transform=TRANSFORM, tokenizers={}, batch_size=2,
                      seed=0, subset=10)
