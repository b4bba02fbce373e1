"""The training loader on map-style datasets: fixed batches, bad-sample replacement, exact resume, ranks, workers."""
from collections import Counter

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from clipdistill.data import BadSample, CsvPairs, SyntheticPairs, build_dataset, train_batches
from clipdistill.data.augmentation import Augmentation
from clipdistill.data.transforms import PairedTransform, apply_view
from clipdistill.errors import UserError
from clipdistill.models.spec import ImageSpec

STUDENT = ImageSpec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TEACHER = ImageSpec(24, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), interpolation="bilinear")
TRANSFORM = PairedTransform({"student_image": STUDENT}, Augmentation(scale=(0.5, 1.0)))
OPEN_CLIP_TOKENIZER = SimpleTokenizer(context_length=16)


def char_tokenizer(captions):
    """A trivial second tokenizer: character codes, padded to 40."""
    out = torch.zeros(len(captions), 40, dtype=torch.long)
    for row, caption in enumerate(captions):
        codes = [ord(c) for c in caption[:40]]
        out[row, :len(codes)] = torch.tensor(codes)
    return out


TOKENIZERS = {"student_text": OPEN_CLIP_TOKENIZER}


def take(n, **kwargs):
    kwargs = {"transform": TRANSFORM, "tokenizers": TOKENIZERS, "seed": 0, **kwargs}
    dataset = kwargs.pop("dataset")
    batches = train_batches(dataset, **kwargs)
    return [next(batches) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["bad"] == y["bad"] and x["epoch"] == y["epoch"]
        for name in ("student_image", "view", "student_text", "index"):
            assert torch.equal(x[name], y[name]), name


# ----------------------------------------------------------------------------- a CSV with bad rows

@pytest.fixture
def csv_path(tmp_path):
    """20 readable images (a distinct gradient each), one missing, one corrupt: 22 usable rows."""
    rows = ["filepath\ttitle"]
    ramp = np.linspace(0, 255, 24, dtype=np.uint8)
    for i in range(20):
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], np.full((24, 24), 10 * i, np.uint8), ramp[:, None]), -1)
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png\tpicture number {i}")
    rows.append("missing.png\tthis file does not exist")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    rows.append("corrupt.jpg\tthis file is corrupt")
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


class Recording(torch.utils.data.Dataset):
    """Wraps a dataset and remembers every index read (workers=0 only: same process)."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.dataset[index]


BAD_KIND = {20: "missing_file", 21: "corrupt_image"}


def test_bad_samples_are_replaced_and_counted_exactly(csv_path):
    data = Recording(CsvPairs(csv_path))
    batches = take(10, dataset=data, batch_size=4)  # 22 // 4 = 5 steps per epoch: two epochs
    assert [b["epoch"] for b in batches] == [0] * 5 + [1] * 5
    for batch in batches:
        assert batch["student_image"].shape == (4, 3, 16, 16) and len(batch["key"]) == 4
        assert len(set(batch["index"].tolist())) == 4  # a replacement never duplicates inside the batch
        assert not set(batch["index"].tolist()) & set(BAD_KIND)
        assert batch["caption"] == [f"picture number {i}" for i in batch["index"].tolist()]
    counted = sum((Counter(b["bad"]) for b in batches), Counter())
    expected = Counter(BAD_KIND[i] for i in data.reads if i in BAD_KIND)
    assert counted == expected and sum(expected.values()) >= 2


def test_worker_count_does_not_change_the_batches(csv_path):
    data = CsvPairs(csv_path)
    assert_same_batches(take(7, dataset=data, batch_size=4), take(7, dataset=data, batch_size=4, workers=2))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_replays_the_tail_of_a_continuous_run_without_reading_skipped_batches(csv_path, workers):
    continuous = take(12, dataset=CsvPairs(csv_path), batch_size=4, workers=workers)
    recording = Recording(CsvPairs(csv_path))
    resumed = take(5, dataset=recording if workers == 0 else CsvPairs(csv_path), batch_size=4, workers=workers,
                   start_step=7)  # step 7 is inside epoch 1
    assert_same_batches(resumed, continuous[7:])
    if workers == 0:
        assert len(recording.reads) == sum(len(b["key"]) + sum(b["bad"].values()) for b in resumed)


def test_ranks_split_each_epoch_disjointly_and_epochs_reshuffle():
    data = SyntheticPairs(40)
    per_rank = {rank: take(8, dataset=data, batch_size=5, rank=rank, world_size=2) for rank in (0, 1)}
    for epoch in (0, 1):
        seen = [i for rank in (0, 1) for b in per_rank[rank] if b["epoch"] == epoch for i in b["index"].tolist()]
        assert sorted(seen) == list(range(40))
    order = [[i for b in per_rank[0] if b["epoch"] == e for i in b["index"].tolist()] for e in (0, 1)]
    assert order[0] != order[1]


def test_subset_uses_the_first_samples_only():
    batches = take(6, dataset=SyntheticPairs(100), batch_size=5, subset=10)
    assert sorted(i for b in batches[:2] for i in b["index"].tolist()) == list(range(10))
    assert max(i for b in batches for i in b["index"].tolist()) < 10
    with pytest.raises(UserError, match="subset"):
        take(1, dataset=SyntheticPairs(5), batch_size=1, subset=6)


def test_batch_layout_tokenizers_and_replayable_views():
    transform = PairedTransform({"student_image": STUDENT, "teacher_image": TEACHER}, TRANSFORM.augmentation)
    data = SyntheticPairs(16)
    (batch,) = take(1, dataset=data, batch_size=8, transform=transform,
                    tokenizers={"student_text": OPEN_CLIP_TOKENIZER, "teacher_text": char_tokenizer})
    assert batch["student_image"].dtype == torch.float32 and batch["teacher_image"].shape == (8, 3, 24, 24)
    assert batch["view"].shape == (8, 5) and batch["view"].dtype == torch.int32
    assert torch.equal(batch["student_text"], OPEN_CLIP_TOKENIZER(batch["caption"]))
    assert batch["student_text"].dtype == torch.long and batch["student_text"].shape == (8, 16)
    assert torch.equal(batch["teacher_text"], char_tokenizer(batch["caption"]))
    assert batch["caption"] == [data[i]["caption"] for i in batch["index"].tolist()]
    # The recorded view reproduces both tensors from the raw image: what the teacher cache relies on.
    for row, index in enumerate(batch["index"].tolist()):
        replay = apply_view(data[index]["image"], batch["view"][row].tolist(), transform.specs)
        assert torch.equal(replay["student_image"], batch["student_image"][row])
        assert torch.equal(replay["teacher_image"], batch["teacher_image"][row])


def test_shared_spec_and_tokenizer_give_one_tensor():
    # Equal ImageSpecs and the same tokenizer object are rendered/tokenized once and shipped once.
    transform = PairedTransform({"student_image": STUDENT, "teacher_image": STUDENT}, TRANSFORM.augmentation)
    (batch,) = take(1, dataset=SyntheticPairs(16), batch_size=8, transform=transform,
                    tokenizers={"student_text": OPEN_CLIP_TOKENIZER, "teacher_text": OPEN_CLIP_TOKENIZER})
    assert batch["teacher_image"] is batch["student_image"] and batch["teacher_text"] is batch["student_text"]
    assert torch.equal(batch["teacher_text"], OPEN_CLIP_TOKENIZER(batch["caption"]))


def test_augmentation_depends_on_seed_and_epoch():
    data = SyntheticPairs(8)

    def views(seed, steps=2):
        batches = take(steps, dataset=data, batch_size=8, seed=seed)
        return [{i: tuple(v.tolist()) for i, v in zip(b["index"].tolist(), b["view"])} for b in batches]

    epoch0, epoch1 = views(0)
    assert len(set(epoch0.values())) >= 6  # each sample draws its own view
    assert sum(epoch0[i] != epoch1[i] for i in range(8)) >= 6
    other_seed = views(1, steps=1)[0]
    assert sum(epoch0[i] != other_seed[i] for i in range(8)) >= 6


# ----------------------------------------------------------------------------- user errors

class MostlyBroken(torch.utils.data.Dataset):
    """60 % of indices raise BadSample, never 32 in a row: only the backstop can catch it."""

    def __len__(self):
        return 5000

    def __getitem__(self, index):
        if index % 5 < 3:
            raise BadSample("corrupt_image", f"#{index}")
        return {"image": Image.new("RGB", (8, 8)), "caption": "x", "key": str(index)}

    def __repr__(self):
        return "MostlyBroken()"


def test_backstop_stops_when_most_samples_are_unreadable():
    with pytest.raises(UserError, match="MostlyBroken.*unreadable"):
        take(100, dataset=MostlyBroken(), batch_size=50)


def test_all_images_missing_is_one_clear_user_error(tmp_path):
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n" + "".join(f"x{i}.jpg\tc\n" for i in range(100)))
    with pytest.raises(UserError) as err:
        take(1, dataset=CsvPairs(tmp_path / "pairs.tsv"), batch_size=4, workers=2)
    assert "pairs.tsv" in str(err.value) and "missing_file" in str(err.value) and "\n" not in str(err.value)


def test_build_dataset(csv_path):
    assert len(build_dataset("synthetic", num_samples=12, seed=3)) == 12
    assert build_dataset("synthetic", num_samples=3, seed=3)[0]["key"] == SyntheticPairs(3, seed=3)[0]["key"]
    assert len(build_dataset("csv", path=str(csv_path))) == 22
    with pytest.raises(UserError, match="unknown dataset kind 'parquet'.*synthetic, csv, webdataset"):
        build_dataset("parquet")
    with pytest.raises(UserError, match="path"):
        build_dataset("csv")
    with pytest.raises(UserError, match="positive"):
        build_dataset("synthetic", num_samples=0)
    with pytest.raises(UserError, match="cannot fill one batch"):
        take(1, dataset=SyntheticPairs(10), batch_size=6, world_size=2)


def test_workers_send_small_tensors_inside_the_pickle_and_the_loop_gets_tensors(csv_path):
    """Small tensors travel as numpy arrays (a shared-memory tensor costs the training process a round trip to
    the worker), big ones as tensors; the loop sees tensors either way, equal to a worker-free run's."""
    from clipdistill.data.batch import PICKLED_BELOW, arrays_as_tensors, small_tensors_as_arrays

    tokens = torch.arange(12).view(3, 4)
    big = torch.zeros(PICKLED_BELOW // 4 + 1)
    packed = small_tensors_as_arrays({"a": tokens, "b": tokens, "big": big, "bf16": tokens.bfloat16(),
                                      "nested": {"rows": torch.arange(3)}, "key": ["x"], "epoch": 1})
    assert isinstance(packed["a"], np.ndarray) and packed["a"] is packed["b"]  # one array for one tensor
    assert packed["big"] is big and isinstance(packed["bf16"], torch.Tensor)
    assert isinstance(packed["nested"]["rows"], np.ndarray) and packed["key"] == ["x"] and packed["epoch"] == 1
    unpacked = arrays_as_tensors(packed)
    assert torch.equal(unpacked["a"], tokens) and unpacked["a"] is unpacked["b"]
    assert torch.equal(unpacked["nested"]["rows"], torch.arange(3))

    in_workers = take(3, dataset=CsvPairs(csv_path), batch_size=4, workers=1)
    assert_same_batches(in_workers, take(3, dataset=CsvPairs(csv_path), batch_size=4))
    assert all(isinstance(b[name], torch.Tensor) for b in in_workers for name in ("view", "index", "student_text"))


class CollatedTypes(torch.utils.data.Dataset):
    """Collates two prepared samples where it runs and returns the types collate produced there."""

    def __init__(self, path):
        self.data = CsvPairs(path)

    def __len__(self):
        return 1

    def __getitem__(self, index):
        from clipdistill.data.batch import collate, prepare

        prepared = [prepare(self.data[i], TRANSFORM, seed=0, epoch=0, sample_id=i, index=i) for i in range(2)]
        return {k: type(v).__name__ for k, v in collate(prepared, TOKENIZERS, Counter()).items()}


def test_collate_packs_small_tensors_only_in_a_worker(csv_path):
    from clipdistill.data.batch import data_loader

    in_worker = next(iter(data_loader(CollatedTypes(csv_path), workers=1, seed=0, batch_size=None)))
    assert in_worker["index"] == in_worker["view"] == in_worker["student_text"] == "ndarray"
    assert CollatedTypes(csv_path)[0]["index"] == "Tensor"  # in the training process: nothing to pack


class SwitchInterval(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        import sys

        return sys.getswitchinterval()


def test_workers_hand_the_gil_over_promptly():
    """The training process fetches each shared tensor's descriptor from a worker thread that needs the GIL:
    a busy worker must let it run within WORKER_SWITCH_INTERVAL, not Python's default 5 ms."""
    from clipdistill.data.batch import WORKER_SWITCH_INTERVAL, data_loader

    loader = data_loader(SwitchInterval(), workers=1, seed=0, batch_size=None)
    assert next(iter(loader)) == pytest.approx(WORKER_SWITCH_INTERVAL) and WORKER_SWITCH_INTERVAL < 5e-3
