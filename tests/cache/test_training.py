"""Training from a cache: replayed views, cached targets equal live ones, refusals, hybrid mode, extras."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipdistill.cache import TeacherCache, open_for_training, write_extra
from clipdistill.data.augmentation import Augmentation
from clipdistill.cache.manifest import read_manifest, write_manifest
from clipdistill.data import SyntheticPairs, train_batches
from clipdistill.data.transforms import PairedTransform, apply_view
from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError
from clipdistill.losses import get as get_loss
from clipdistill.losses.cid_cluster import load_centroids
from clipdistill.losses.objective import build_objective
from clipdistill.models import build_student
from clipdistill.targets import CachedTeacherTargets, LiveTeacherTargets

from cache_helpers import NUM_SAMPLES


def cache_keys(cache):
    return [str(k) for k in cache.index.sorted_keys[np.argsort(cache.index.sorted_rows)]]


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student("tiny")


def _batches(dataset, student, teacher, views, batch_size=10, seed=5):
    specs = {"student_image": student.image_spec, "teacher_image": teacher.image_spec}
    tokenizers = {"student_text": student.tokenizer, "teacher_text": teacher.tokenizer}
    return train_batches(dataset, transform=PairedTransform(specs), tokenizers=tokenizers, batch_size=batch_size,
                         seed=seed, views=views)


def test_loader_replays_a_stored_view_chosen_from_seed_epoch_and_sample(cache_dir, dataset, student, teacher):
    cache = TeacherCache(cache_dir)
    batches = _batches(dataset, student, teacher, cache.views())
    epochs = [next(batches) for _ in range(2 * NUM_SAMPLES // 10)]  # two epochs of 2 batches
    chosen = {}
    for batch in epochs:
        for i, key in enumerate(batch["key"]):
            row, v = int(cache.rows([key])), int(batch["view_index"][i])
            assert batch["view"][i].tolist() == cache.view[row, v].tolist()
            chosen.setdefault(key, []).append(v)
    # The student's pixels are that stored crop, rendered with the student's spec.
    first = epochs[0]
    sample = dataset[int(first["index"][0])]
    expected = apply_view(sample["image"], first["view"][0].tolist(), {"s": student.image_spec})["s"]
    assert torch.equal(first["student_image"][0], expected)
    # Deterministic: a second loader replays the same choices; over epochs both stored views get used.
    again = next(_batches(dataset, student, teacher, cache.views()))
    assert torch.equal(again["view_index"], first["view_index"]) and again["key"] == first["key"]
    assert {v for vs in chosen.values() for v in vs} == {0, 1}
    assert any(len(set(vs)) == 2 for vs in chosen.values())


def test_cached_targets_and_loss_equal_the_live_teachers(cache_dir, dataset, student, teacher):
    cache = TeacherCache(cache_dir)
    batch = next(_batches(dataset, student, teacher, cache.views()))
    live = LiveTeacherTargets(teacher, torch.device("cpu"))(batch)
    cached = CachedTeacherTargets(cache, torch.device("cpu"))(batch)
    assert cached.normalized and torch.allclose(cached.image.norm(dim=-1), torch.ones(10), atol=1e-6)
    assert torch.allclose(cached.image, live.image, atol=2e-3) and torch.allclose(cached.text, live.text, atol=2e-3)
    assert torch.allclose(cached.logit_scale, live.logit_scale)
    torch.manual_seed(1)
    objective = build_objective({"clip": {}, "fd": {"weight": 3.9}, "crd": {}, "icl": {}},
                                student_dim=student.embed_dim, teacher_dim=teacher.embed_dim)
    s = Embeddings(image=student.model.encode_image(batch["student_image"]),
                   text=student.model.encode_text(batch["student_text"]), logit_scale=student.model.logit_scale.exp())
    live_total, live_terms = objective(s, live)
    cached_total, cached_terms = objective(s, cached)
    assert torch.allclose(cached_total, live_total, rtol=1e-3, atol=1e-4)
    for name in live_terms:
        assert torch.allclose(cached_terms[name], live_terms[name], rtol=1e-3, atol=1e-4), name
    # ...and the targets are not trivially equal to anything: another view's embedding is far from them.
    other = CachedTeacherTargets(cache, torch.device("cpu"))({**batch, "view_index": 1 - batch["view_index"]})
    assert not torch.allclose(other.image, live.image, atol=2e-3)


def _small_dataset_batch(dataset, student, teacher, cache):
    """A batch of a 24-sample dataset: keys of samples 20..23 are not in the 20-sample cache."""
    bigger = SyntheticPairs(NUM_SAMPLES + 4, seed=3)
    for batch in _batches(bigger, student, teacher, cache.views(), batch_size=12):
        if (batch["view_index"] < 0).any():
            return batch


def test_missing_samples_are_an_error_in_strict_mode_and_live_in_hybrid(cache_dir, dataset, student, teacher):
    cache = TeacherCache(cache_dir)
    batch = _small_dataset_batch(dataset, student, teacher, cache)
    missing = batch["view_index"] < 0
    with pytest.raises(UserError, match=r"not in the teacher cache .* teacher.cache_mode=hybrid"):
        CachedTeacherTargets(cache, torch.device("cpu"))(batch)
    live = LiveTeacherTargets(teacher, torch.device("cpu"))
    hybrid = CachedTeacherTargets(cache, torch.device("cpu"), live=live)(batch)
    expected = live(batch)
    assert torch.allclose(hybrid.image[missing], expected.image[missing], atol=1e-6)
    assert torch.allclose(hybrid.image[~missing], expected.image[~missing], atol=2e-3)


def test_open_for_training_refuses_a_cache_of_another_teacher_or_augmentation(cache_dir):
    open_for_training(str(cache_dir), mode="strict", model="tiny-teacher")  # the teacher it was made with
    with pytest.raises(UserError, match="teacher.model: cache has 'tiny-teacher', run has 'ViT-B-16'"):
        open_for_training(str(cache_dir), mode="strict", model="ViT-B-16", pretrained="openai")
    with pytest.raises(UserError, match=r"augmentation.scale: cache has \[0.9, 1.0\], run has \[0.5, 1.0\]"):
        open_for_training(str(cache_dir), mode="strict", augmentation=Augmentation(scale=(0.5, 1.0)))
    with pytest.raises(UserError, match="augmentation.hflip"):
        open_for_training(str(cache_dir), mode="strict", augmentation=Augmentation(hflip=True))
    with pytest.raises(UserError, match="unknown teacher.cache_mode 'lazy'"):
        open_for_training(str(cache_dir), mode="lazy")


def test_hybrid_mode_loads_the_cached_teacher_and_refuses_changed_weights(tmp_path, cache_dir, teacher_file):
    source = open_for_training(str(cache_dir), mode="hybrid")
    assert source.teacher is not None and source.teacher.identity["path"] == str(teacher_file)
    # Same path, other weights (a re-trained checkpoint written over the old one): refused.
    changed = tmp_path / "cache"
    changed.mkdir()
    for f in cache_dir.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(changed)
    manifest["weights_fingerprint"] = "0" * 64
    write_manifest(changed, manifest)
    with pytest.raises(UserError, match="weights or preprocessing changed.*weights_fingerprint"):
        open_for_training(str(changed), mode="hybrid")


def test_manifest_records_the_teacher_precision_and_hybrid_computes_alike(tmp_path, cache_dir):
    assert read_manifest(cache_dir)["teacher_precision"] == "fp32"
    # This run asks for bf16; the cache was computed in fp32, so the gap-filling teacher must be too.
    assert open_for_training(str(cache_dir), mode="hybrid", precision="bf16").teacher.compute_precision == "fp32"
    bf16_cache = tmp_path / "bf16"
    bf16_cache.mkdir()
    for f in cache_dir.iterdir():
        (bf16_cache / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(bf16_cache)
    manifest["teacher_precision"] = "bf16"
    write_manifest(bf16_cache, manifest)
    assert open_for_training(str(bf16_cache), mode="hybrid", precision="fp32").teacher.compute_precision == "bf16"


def test_other_format_versions_and_non_caches_are_refused(tmp_path, cache_dir):
    with pytest.raises(UserError, match="not a teacher cache"):
        TeacherCache(tmp_path)
    for f in cache_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(tmp_path)
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(UserError, match="version 99 is not 'clipdistill-teacher-cache' version 1 or 2"):
        TeacherCache(tmp_path)


def test_cluster_labels_stored_as_an_extra_reach_the_targets(tmp_path, cache_dir, dataset, student, teacher):
    for f in cache_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cache = TeacherCache(tmp_path)
    centroids = F.normalize(torch.randn(3, teacher.embed_dim), dim=-1)
    labels = (cache.image[:, 0].float() @ centroids.T).argmax(dim=1)
    write_extra(tmp_path, "cluster", labels, "k-means pseudo-labels", centroids=centroids)
    cache = TeacherCache(tmp_path)
    assert read_manifest(tmp_path)["extras"]["cluster"]["tensors"] == ["centroids", "values"]
    batch = _small_dataset_batch(dataset, student, teacher, cache)
    missing = batch["view_index"] < 0
    live = LiveTeacherTargets(teacher, torch.device("cpu"))
    targets = CachedTeacherTargets(cache, torch.device("cpu"), live=live)(batch)
    rows = cache.rows(batch["key"])
    assert torch.equal(targets.extras["cluster"][~missing], labels[rows[~missing]])
    nearest = (live(batch).image[missing] @ centroids.T).argmax(dim=1)
    assert torch.equal(targets.extras["cluster"][missing], nearest)
    with pytest.raises(UserError, match="has 3 rows, the cache 20 samples"):
        write_extra(tmp_path, "bad", torch.zeros(3))


def test_cid_cluster_reads_its_centroids_from_the_caches_cluster_extra(tmp_path, cache_dir, teacher):
    for f in cache_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="has no cluster centroids: run clipdistill cluster"):
        load_centroids(tmp_path)
    centroids = 3 * torch.randn(4, teacher.embed_dim)  # unnormalized: the loss normalizes what it reads
    write_extra(tmp_path, "cluster", torch.arange(NUM_SAMPLES) % 4, "labels", centroids=centroids)
    loss = get_loss("cid_cluster", centroids=str(tmp_path), student_dim=teacher.embed_dim,
                    teacher_dim=teacher.embed_dim)
    assert torch.allclose(load_centroids(tmp_path), F.normalize(centroids, dim=-1))
    assert torch.allclose(loss.label_centroids, F.normalize(centroids, dim=-1))


def test_stored_rows_are_gathered_in_the_loader_workers_and_used_as_they_come(cache_dir, dataset, student,
                                                                                teacher):
    cache = TeacherCache(cache_dir)
    targets = CachedTeacherTargets(cache, torch.device("cpu"))
    specs = {"student_image": student.image_spec}
    batches = train_batches(dataset, transform=PairedTransform(specs), tokenizers={"student_text": student.tokenizer},
                            batch_size=10, seed=5, views=cache.views(), workers=2, batch_extras=targets.stored_rows)
    batch = next(batches)
    stored = {k: torch.as_tensor(v) for k, v in batch["teacher_stored"].items() if k != "extras"}  # from a worker
    expected = targets.stored_rows.gather(batch["key"], batch["view_index"])
    assert torch.equal(stored["rows"], expected["rows"]) and not stored["missing"].any()
    assert torch.equal(stored["image"], expected["image"]) and torch.equal(stored["text"], expected["text"])

    def no_gathering_here(*args):
        raise AssertionError("the training process gathered rows the workers had gathered")

    targets.stored_rows.gather = no_gathering_here
    from_workers = targets(batch)
    assert torch.equal(from_workers.image, expected["image"]) and torch.equal(from_workers.text, expected["text"])


def test_a_cache_pickles_as_its_directory_not_its_embeddings(cache_dir):
    import pickle

    cache = TeacherCache(cache_dir)
    data = pickle.dumps(cache)
    assert len(data) < 1000 < cache.image.numel()  # the 20 x 2 x 96 embeddings are not in it
    again = pickle.loads(data)
    rows, views = torch.arange(len(cache)), torch.zeros(len(cache), dtype=torch.long)
    assert torch.equal(again.image_rows(rows, views), cache.image_rows(rows, views))


def test_a_worker_reopens_one_cache_for_its_views_and_its_stored_rows(tmp_path, cache_dir):
    import pickle

    for f in cache_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cache = TeacherCache(tmp_path)
    targets = CachedTeacherTargets(cache, torch.device("cpu"))
    # A spawned worker unpickles the dataset (holding the views) and the batch extras apart.
    views, stored_rows = pickle.loads(pickle.dumps(cache.views())), pickle.loads(pickle.dumps(targets.stored_rows))
    assert views.cache is stored_rows.cache and views.cache is not cache
    assert torch.equal(views.get(cache_keys(cache)[3]), cache.view[3])
    write_extra(tmp_path, "cluster", torch.arange(NUM_SAMPLES) % 4)  # a new manifest: opened anew, with it
    again = pickle.loads(pickle.dumps(cache))
    assert again is not views.cache and "cluster" in again.extras
    data = pickle.dumps(cache)
    for f in tmp_path.iterdir():
        if f.is_file():
            f.unlink()
    with pytest.raises(UserError, match="cannot be reopened"):
        pickle.loads(data)


def test_extras_of_any_dtype_come_through_the_loader_workers(tmp_path, cache_dir, dataset, student, teacher):
    for f in cache_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    soft = torch.randn(NUM_SAMPLES, 3).to(torch.bfloat16)  # numpy has no bfloat16: it must stay a tensor
    write_extra(tmp_path, "soft", soft, "bf16 soft labels")
    write_extra(tmp_path, "cluster", torch.arange(NUM_SAMPLES) % 4, "labels")
    cache = TeacherCache(tmp_path)
    targets = CachedTeacherTargets(cache, torch.device("cpu"))
    batches = train_batches(dataset, transform=PairedTransform({"student_image": student.image_spec}),
                            tokenizers={"student_text": student.tokenizer}, batch_size=10, seed=5,
                            views=cache.views(), workers=2, batch_extras=targets.stored_rows)
    batch = next(batches)
    rows = cache.rows(batch["key"])
    extras = targets(batch).extras
    assert extras["soft"].dtype == torch.bfloat16 and torch.equal(extras["soft"], soft[rows])
    assert torch.equal(extras["cluster"], (torch.arange(NUM_SAMPLES) % 4)[rows])
