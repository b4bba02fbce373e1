"""The demo's and the ablation's CLIP-CID data, made by the real commands: cache -> curate -> cluster."""
import json

import numpy as np
import pytest

from clipdistill import config as config_lib
from clipdistill.cache.reader import TeacherCache
from clipdistill.curate.pseudo_labels import clustering_space
from clipdistill.curate.recipe import cid_losses, prepare_cid_data
from clipdistill.curate.sources import read_cache

ROWS = 96


def subset_config():
    return config_lib.load(None, ["teacher.source=openclip", "teacher.model=tiny-teacher", "data.kind=synthetic",
                                  f"data.num_samples={ROWS}", "data.workers=0", "train.progress=false",
                                  "cache.batch_size=32", "cache.views=4"])


@pytest.mark.parametrize("space", ["image", "both"])
def test_cid_data_is_what_the_commands_write(tmp_path, space):
    cid = prepare_cid_data(subset_config(), out_dir=tmp_path, label_clusters=4, space=space)
    cache = TeacherCache(tmp_path / "cache")
    # One view per sample, the whole image, whatever the config asked for: curation compares images.
    assert cache.manifest["augmentation"]["views"] == 1 and cache.manifest["augmentation"]["scale"] == [1.0, 1.0]
    assert len(cache) == ROWS
    keep, random_keep = np.load(cid.keep), np.load(cid.random_keep)
    report = json.loads((tmp_path / "curated" / "report.json").read_text())
    assert report["n_total"] == ROWS and len(keep) == len(random_keep) == report["n_kept"]
    assert 0.3 < 1 - len(keep) / ROWS < 0.6  # the paper's 43.7 %, up to ties at this size
    assert np.all(np.diff(random_keep) > 0) and random_keep.max() < ROWS
    centroids = np.load(cid.centroids)
    assert centroids.shape == (4, 96) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert cid_losses(cid.centroids)["cid_cluster"]["centroids"] == str(cid.centroids)
    if space == "both":  # curated on image ⊕ caption, rows in dataset order
        stored = read_cache(tmp_path / "cache", text=True)
        expected = clustering_space(stored.image, stored.text, "both")
        np.testing.assert_allclose(np.load(tmp_path / "teacher_image_text.npy"), expected, atol=1e-6)
    else:  # a rerun (the ablation's after a kill) reuses the complete cache and writes the same keep list
        again = prepare_cid_data(subset_config(), out_dir=tmp_path, label_clusters=4, space=space)
        np.testing.assert_array_equal(np.load(again.keep), keep)
        # ε itself (CLIP-CID's setting): the ε that removed 43.7 % keeps the same rows.
        by_eps = prepare_cid_data(subset_config(), out_dir=tmp_path, label_clusters=4, threshold=report["threshold"])
        assert json.loads((tmp_path / "curated" / "report.json").read_text())["threshold"] == report["threshold"]
        np.testing.assert_array_equal(np.load(by_eps.keep), keep)


def test_the_random_control_keeps_as_many_images_with_all_their_captions(tmp_path):
    """Five captions per image (as Flickr8k): curation keeps whole images, and so must its random control."""
    from PIL import Image

    rows = ["filepath\ttitle"]
    for i in range(24):
        Image.new("RGB", (40, 30), (10 * i, 255 - 10 * i, (37 * i) % 256)).save(tmp_path / f"{i}.png")
        rows += [f"{tmp_path / f'{i}.png'}\tcaption {c} of image {i}" for c in range(5)]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    config = config_lib.load(None, ["teacher.source=openclip", "teacher.model=tiny-teacher", "data.kind=csv",
                                    f"data.path={tmp_path / 'pairs.tsv'}", "data.workers=0", "train.progress=false",
                                    "cache.batch_size=32"])
    cid = prepare_cid_data(config, out_dir=tmp_path / "cid", label_clusters=4, space="image")
    keep, random_keep = np.load(cid.keep), np.load(cid.random_keep)
    assert len(keep) == len(random_keep) and len(keep) % 5 == 0 and 0 < len(keep) < 120
    images_of = lambda kept: set((kept // 5).tolist())  # rows are ordered by image, 5 each
    assert len(images_of(random_keep)) == len(keep) // 5  # whole images: every caption of a drawn image
    assert all(set(range(5 * i, 5 * i + 5)) <= set(random_keep.tolist()) for i in images_of(random_keep))
