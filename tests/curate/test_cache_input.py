"""curate and cluster reading a teacher cache: same results as the exported .npy, keep.npy in dataset
rows although the cache skipped a bad sample, pseudo-labels stored as the cache's ``cluster`` extra."""
import json
import shutil

import numpy as np
import pytest
import torch

from cache.cache_helpers import make_cache
from clipdistill.cache import TeacherCache
from clipdistill.cli import main
from clipdistill.data import SyntheticPairs
from clipdistill.data.bad_samples import BadSample
from clipdistill.models import load_teacher
from clipdistill.targets import CachedTeacherTargets

ROWS = 20
COPIES = {13: 2, 17: 9}  # dataset row -> the row whose image and caption it repeats
BAD = 5  # unreadable: the cache skips it, so cache rows after it are dataset rows minus one
CACHE_ROWS = np.array([row for row in range(ROWS) if row != BAD])  # dataset row of each cache row


class PlantedPairs:
    """Synthetic pairs with exact copies of two samples (under keys of their own) and one bad sample."""

    def __init__(self):
        self.base = SyntheticPairs(ROWS, seed=3)

    def __len__(self):
        return ROWS

    def __getitem__(self, row):
        if row == BAD:
            raise BadSample("corrupt_image", "planted")
        return {**self.base[COPIES.get(row, row)], "key": f"s{row:03d}"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    torch.manual_seed(7)
    teacher = load_teacher("openclip", model="tiny-teacher")
    directory = tmp_path_factory.mktemp("planted_cache")
    # Whole-image views (scale and ratio 1): a copy's stored view 0 is then the same pixels as its source's.
    manifest = make_cache(directory, PlantedPairs(), teacher, dataset_info={"kind": "planted"},
                          scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert manifest["count"] == ROWS - 1 and manifest["skipped"] == {"corrupt_image": 1}
    return directory


def exported(cache_dir, tmp_path, tower="image"):
    """The cache's image view 0 (or text) as a .npy in cache row order: the equivalent file input."""
    cache = TeacherCache(cache_dir)
    values = cache.image[:, 0] if tower == "image" else cache.text
    path = tmp_path / f"{tower}.npy"
    np.save(path, values.float().numpy())
    return path


def curate(embeddings, out, *options):
    assert main(["curate", "--embeddings", str(embeddings), "--out", str(out), "--no-progress", *options]) == 0
    return np.load(out / "keep.npy"), json.loads((out / "report.json").read_text())


def test_curate_from_cache_removes_the_copies_and_names_dataset_rows(cache_dir, tmp_path):
    keep, report = curate(cache_dir, tmp_path / "cur", "--clusters", "1", "--threshold", "0.001")
    assert report["n_total"] == ROWS - 1 and keep.dtype == np.int64 and np.all(np.diff(keep) > 0)
    for copy, source in COPIES.items():
        assert (copy in keep) != (source in keep)  # one of each identical pair stays
    others = [row for row in range(ROWS) if row != BAD and row not in COPIES and row not in COPIES.values()]
    assert set(others) <= set(keep.tolist()) and BAD not in keep
    assert ROWS - 1 in keep  # the last dataset row: as a cache row it would be ROWS - 2


def test_curate_from_cache_equals_curate_from_the_exported_npy(cache_dir, tmp_path):
    options = ("--clusters", "2", "--target-removal", "0.3")
    from_cache, report = curate(cache_dir, tmp_path / "a", *options)
    from_file, _ = curate(exported(cache_dir, tmp_path), tmp_path / "b", *options)
    assert report["n_kept"] == len(from_file) == len(from_cache) < ROWS - 1
    assert from_cache.tolist() == sorted(CACHE_ROWS[from_file].tolist())


def test_cluster_from_cache_stores_the_labels_as_the_cluster_extra(cache_dir, tmp_path):
    cache_copy = shutil.copytree(cache_dir, tmp_path / "cache")  # the module's cache stays without extras
    options = ("--tower", "both", "--clusters", "3", "--no-progress")
    assert main(["cluster", "--embeddings", str(cache_copy), "--out", str(tmp_path / "cl"), *options]) == 0
    assert main(["cluster", "--embeddings", str(exported(cache_dir, tmp_path)), "--text-embeddings",
                 str(exported(cache_dir, tmp_path, "text")), "--out", str(tmp_path / "files"), *options]) == 0
    labels = np.load(tmp_path / "cl" / "labels.npy")
    assert labels.tolist() == np.load(tmp_path / "files" / "labels.npy").tolist()
    assert json.loads((tmp_path / "cl" / "clusters.json").read_text())["cache_extra"] == "cluster"

    cache = TeacherCache(cache_copy)
    extra = cache.extras["cluster"]
    assert torch.equal(extra["values"], torch.from_numpy(labels))
    assert np.array_equal(extra["centroids"].numpy(), np.load(tmp_path / "cl" / "centroids_image.npy"))
    assert "cluster" in cache.manifest["extras"]
    # What a teacher.source=cache run hands the cid_cluster loss: each sample's label, found by key.
    keys = ["s019", "s000", "s013"]
    targets = CachedTeacherTargets(cache, torch.device("cpu"))({"key": keys, "view_index": torch.zeros(3)})
    rows = [CACHE_ROWS.tolist().index(int(key[1:])) for key in keys]
    assert targets.extras["cluster"].tolist() == labels[rows].tolist()


def test_cache_input_errors_are_one_line(cache_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["curate", "--embeddings", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a teacher cache" in capsys.readouterr().err
    incomplete = shutil.copytree(cache_dir, tmp_path / "incomplete")
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert main(["cluster", "--embeddings", str(incomplete), "--out", str(tmp_path / "o")]) == 2
    assert "is incomplete" in capsys.readouterr().err
    assert main(["cluster", "--embeddings", str(cache_dir), "--text-embeddings", "t.npy", "--out",
                 str(tmp_path / "o")]) == 2
    assert "cannot be combined with a teacher cache" in capsys.readouterr().err



def test_multi_caption_cache_is_curated_per_image_and_keeps_every_caption_of_a_kept_image(tmp_path):
    """Rows of one image share its embedding: curated per caption row they would all be "duplicates"
    of each other. Per image, only the copied picture goes, with all of its captions."""
    from clipdistill.data import CsvPairs

    scenes = SyntheticPairs(3, seed=1, image_size=48)
    for i, name in enumerate("abc"):
        scenes[i]["image"].save(tmp_path / f"{name}.png")
    scenes[0]["image"].save(tmp_path / "a_copy.png")  # the same picture under another name
    rows = [("a", "a one"), ("a", "a two"), ("a", "a three"), ("b", "b one"), ("b", "b two"), ("c", "c one"),
            ("a_copy", "copy one"), ("a_copy", "copy two")]
    lines = ["filepath\ttitle", *(f"{image}.png\t{caption}" for image, caption in rows)]
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(7)
    teacher = load_teacher("openclip", model="tiny-teacher")
    make_cache(tmp_path / "cache", CsvPairs(tmp_path / "captions.tsv"), teacher, views=1, shard_size=100,
               dataset_info={"kind": "csv", "path": str(tmp_path / "captions.tsv")}, scale=(1.0, 1.0),
               ratio=(1.0, 1.0))
    keep, report = curate(tmp_path / "cache", tmp_path / "cur", "--clusters", "1", "--threshold", "0.001")
    assert report["images"] == 4 and report["n_total"] == 4 and report["n_kept"] == 3 and report["rows"] == 8
    a_rows, copy_rows = [0, 1, 2], [6, 7]
    assert keep.tolist() in (a_rows + [3, 4, 5], [3, 4, 5] + copy_rows)  # all captions of each kept image
