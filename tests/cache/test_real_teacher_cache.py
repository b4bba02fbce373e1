"""A cache of a SigLIP-style folder teacher records its resize mode, logit bias, context and cut captions."""
import json
import shutil

import pytest
import torch

from clipdistill.cache import TeacherCache, read_manifest
from clipdistill.cache.manifest import MANIFEST
from clipdistill.data.transforms import apply_view
from clipdistill.models import load_teacher
from clipdistill.models.guards import count_truncated

from cache_helpers import NUM_SAMPLES, make_cache

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sigmoid_teacher(tmp_path_factory):
    from real_teachers import make_siglip_style_folder

    folder = make_siglip_style_folder(tmp_path_factory.mktemp("siglip_style") / "model")
    return load_teacher("openclip", model=f"local-dir:{folder}")


@pytest.fixture(scope="module")
def sigmoid_cache(tmp_path_factory, dataset, sigmoid_teacher):
    directory = tmp_path_factory.mktemp("sigmoid_cache")
    make_cache(directory, dataset, sigmoid_teacher, views=1)
    return directory


def test_manifest_records_resize_mode_bias_context_and_cut_captions(sigmoid_cache, dataset, sigmoid_teacher):
    manifest = read_manifest(sigmoid_cache)
    assert manifest["image_spec"] == {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                                      "resize_mode": "squash"}
    assert manifest["logit_bias"] == pytest.approx(-7.5) and manifest["context_length"] == 8
    captions = [dataset[i]["caption"] for i in range(NUM_SAMPLES)]
    expected_cut = count_truncated(sigmoid_teacher.tokenizer, captions)
    assert 0 < expected_cut < NUM_SAMPLES  # the procedural captions straddle the 8-token context
    assert manifest["truncated_captions"] == expected_cut


def test_reader_exposes_the_bias_and_the_embeddings_are_of_squashed_views(sigmoid_cache, dataset, sigmoid_teacher):
    cache = TeacherCache(sigmoid_cache)
    assert isinstance(cache.logit_bias, torch.Tensor) and cache.logit_bias.item() == pytest.approx(-7.5)
    sample = dataset[5]
    view = cache.stored_views(int(cache.rows([sample["key"]])[0]))[0].tolist()
    pixels = apply_view(sample["image"], view, {"t": sigmoid_teacher.image_spec})["t"]
    expected = sigmoid_teacher.encode_image(pixels[None])[0]
    stored = cache.image_rows(cache.rows([sample["key"]]), torch.tensor([0]))[0]
    torch.testing.assert_close(stored, expected, rtol=0, atol=2e-3)  # fp16 storage


def test_a_softmax_teachers_cache_has_no_bias(cache_dir):
    assert TeacherCache(cache_dir).logit_bias is None
    assert read_manifest(cache_dir)["truncated_captions"] == 0  # open_clip's BPE, 32 tokens: nothing cut


def test_an_older_manifest_reads_as_shortest_without_bias(tmp_path, cache_dir):
    shutil.copytree(cache_dir, tmp_path / "old")
    path = tmp_path / "old" / MANIFEST
    manifest = json.loads(path.read_text())
    for key in ("logit_bias", "context_length", "truncated_captions"):
        del manifest[key]
    del manifest["image_spec"]["resize_mode"]
    path.write_text(json.dumps(manifest))
    cache = TeacherCache(tmp_path / "old")
    assert cache.manifest["image_spec"]["resize_mode"] == "shortest" and cache.logit_bias is None
