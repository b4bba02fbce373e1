"""WebDataset shards: a missing shard, a truncated shard, members named ../x or /x, bad members."""
from collections import Counter

import pytest

from clipdistill.data import ShardPairs, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.errors import UserError
from clipdistill.models.spec import ImageSpec
from faults.corpus import IMAGES, jpeg, noisy_png, write_tar

TRANSFORM = PairedTransform({"student_image": ImageSpec(16, (0.5,) * 3, (0.5,) * 3)})


def first_epoch(shards: ShardPairs) -> tuple[list[str], Counter]:
    keys, bad = [], Counter()
    for item in shards.stream(seed=0, reader=0, readers=1):
        if item["epoch"] > 0:
            return keys, bad
        if "bad" in item:
            bad[item["bad"]] += 1
        else:
            keys.append(item["key"])


def test_missing_shard_is_one_line_naming_it(tmp_path):
    write_tar(tmp_path / "00000.tar", {"a.jpg": jpeg(), "a.txt": b"a red square"})
    with pytest.raises(UserError) as err:
        ShardPairs(str(tmp_path / "{00000..00002}.tar"))
    message = str(err.value)
    assert "2 of 3 shards not found" in message and "00001.tar" in message and "\n" not in message


def test_truncated_shard_keeps_what_precedes_the_cut_and_counts_the_rest(tmp_path):
    members = {}
    for i in range(6):
        members |= {f"k{i}.png": noisy_png(seed=i), f"k{i}.txt": f"caption {i}".encode()}
    write_tar(tmp_path / "full.tar", members)
    data = (tmp_path / "full.tar").read_bytes()
    # Cut inside the fourth sample's image: samples 0-2 are whole, the rest is gone.
    cut = data.index(b"caption 2") + 3000
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    keys, bad = first_epoch(ShardPairs(str(tmp_path / "cut.tar")))
    assert sorted(keys) == ["k0", "k1", "k2"]
    assert bad["unreadable_shard"] == 1


def test_members_escaping_the_shard_are_refused(tmp_path):
    members = {"ok.jpg": jpeg(), "ok.txt": b"a red square",
               "../evil.jpg": jpeg(), "../evil.txt": b"climbs out",
               "/etc/abs.jpg": jpeg(), "/etc/abs.txt": b"absolute",
               "dir/../../up.jpg": jpeg(), "dir/../../up.txt": b"climbs out too"}
    write_tar(tmp_path / "names.tar", members)
    keys, bad = first_epoch(ShardPairs(str(tmp_path / "names.tar")))
    assert keys == ["ok"] and bad == {"unsafe_name": 3}


def test_every_bad_member_kind_is_counted_and_good_ones_converted(tmp_path):
    members = {}
    for i in range(8):  # enough good samples for full batches
        members |= {f"good{i}.jpg": jpeg((30 * i, 0, 0)), f"good{i}.txt": b"a red square"}
    for name, (make, _) in IMAGES.items():
        key, ext = name.rsplit(".", 1)
        members |= {f"{key}.{ext}": make(), f"{key}.txt": f"a picture: {key}".encode()}
    members |= {"latin1.jpg": jpeg(), "latin1.txt": b"caf\xe9 au lait",  # kept, bad bytes replaced
                "nocap.jpg": jpeg(), "emptycap.jpg": jpeg(), "emptycap.txt": b"  ", "noimage.txt": b"a caption"}
    write_tar(tmp_path / "mixed.tar", members)
    keys, bad = first_epoch(ShardPairs(str(tmp_path / "mixed.tar")))
    converted = {name.rsplit(".", 1)[0] for name, (_, kind) in IMAGES.items() if kind == "ok"}
    assert set(keys) == {f"good{i}" for i in range(8)} | converted | {"latin1"}
    assert bad == {"corrupt_image": 2, "empty_file": 1, "decompression_bomb": 1, "missing_caption": 1,
                   "empty_caption": 1, "missing_image": 1}
    # Through the training loader (a worker process): the same counts arrive with the batches.
    batches = train_batches(ShardPairs(str(tmp_path / "mixed.tar")), transform=TRANSFORM, tokenizers={},
                            batch_size=4, seed=0, workers=1)
    seen, counted = 0, Counter()
    while seen < len(keys) - len(keys) % 4:
        batch = next(batches)
        seen, counted = seen + len(batch["key"]), counted + Counter(batch["bad"])
    assert counted == bad
