"""Several teachers behind one targets object (issue 19): live, cached and mixed, each teacher with its own
preprocessing and tokenizer on the one sampled crop; caches that do not share keys and views are refused."""
import pytest
import torch

from clipdistill.cache import TeacherCache, open_for_training
from clipdistill.cache.manifest import read_manifest, write_manifest
from clipdistill.cache.training import refuse_unshared_views
from clipdistill.data import SyntheticPairs, train_batches
from clipdistill.data.transforms import PairedTransform
from clipdistill.ensemble import TeacherEnsemble
from clipdistill.errors import UserError
from clipdistill.models import build_student, load_teacher
from clipdistill.targets import BatchKeys, EnsembleTargets, LiveTeacherTargets

from cache_helpers import DATASET_INFO, make_cache

CPU = torch.device("cpu")
# The second teacher: another architecture (a ResNet tower, 64 wide) with other preprocessing.
SECOND_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student("tiny")


@pytest.fixture(scope="module")
def second_teacher():
    torch.manual_seed(11)
    return load_teacher("openclip", model="tiny-rn", preprocess=SECOND_PREPROCESS)


@pytest.fixture(scope="module")
def second_cache(tmp_path_factory, dataset, second_teacher):
    directory = tmp_path_factory.mktemp("second_cache")
    make_cache(directory, dataset, second_teacher)
    return directory


def _cached(directory, member: int):
    return open_for_training(str(directory), mode="strict", keys=BatchKeys.of_member(member))


def _batch(dataset, student, *ensembles: EnsembleTargets):
    """A batch with what every given ensemble needs (the first one's views replayed)."""
    needs = [e.loader_needs(student) for e in ensembles]
    specs = {"student_image": student.image_spec, **{k: v for n in needs for k, v in n.specs.items()}}
    tokenizers = {"student_text": student.tokenizer, **{k: v for n in needs for k, v in n.tokenizers.items()}}
    return next(train_batches(dataset, transform=PairedTransform(specs), tokenizers=tokenizers, batch_size=10,
                              seed=5, views=needs[0].views, batch_extras=needs[0].batch_extras))


def test_two_caches_give_each_teachers_embedding_of_the_replayed_crop(cache_dir, second_cache, dataset, student,
                                                                      teacher, second_teacher):
    cached = EnsembleTargets([_cached(cache_dir, 0), _cached(second_cache, 1)], weights=[3.0, 1.0],
                             temperatures=[None, 7.0])
    live = EnsembleTargets([LiveTeacherTargets(teacher, CPU, BatchKeys.of_member(0)),
                            LiveTeacherTargets(second_teacher, CPU, BatchKeys.of_member(1))], [1, 1], [None, None])
    needs = cached.loader_needs(student)
    assert set(live.loader_needs(student).specs) == {"teacher_image", "teacher1_image"}
    assert needs.specs == {} and needs.views is not None  # strict caches render nothing
    batch = _batch(dataset, student, cached, live)
    assert {"teacher_stored", "teacher1_stored"} <= set(batch)  # each cache's rows, gathered in the loader
    # Each teacher rendered the crop its own way: the squash teacher's pixels are not the first one's.
    assert not torch.allclose(batch["teacher_image"], batch["teacher1_image"])
    targets, expected = cached(batch), live(batch)
    assert isinstance(targets, TeacherEnsemble) and targets.weights == (0.75, 0.25)
    assert [m.dim for m in targets.members] == [96, 64] == cached.dims
    for got, want in zip(targets.members, expected.members):
        assert torch.allclose(got.image, want.image, atol=2e-3) and torch.allclose(got.text, want.text, atol=2e-3)
    assert targets.members[0].logit_scale == TeacherCache(cache_dir).logit_scale  # its own scale
    assert targets.members[1].logit_scale.item() == 7.0  # its temperature


def test_a_live_teacher_beside_a_cache_sees_the_replayed_crop(cache_dir, second_cache, dataset, student,
                                                             second_teacher):
    mixed = EnsembleTargets([_cached(cache_dir, 0), LiveTeacherTargets(second_teacher, CPU, BatchKeys.of_member(1))],
                            [1, 1], [None, None])
    both_cached = EnsembleTargets([_cached(cache_dir, 0), _cached(second_cache, 1)], [1, 1], [None, None])
    batch = _batch(dataset, student, mixed, both_cached)
    assert (batch["view_index"] >= 0).all()  # stored views were replayed
    got, expected = mixed(batch), both_cached(batch)
    assert torch.allclose(got.members[1].image, expected.members[1].image, atol=2e-3)
    assert torch.equal(got.members[0].image, expected.members[0].image)


def test_one_teacher_keeps_the_batch_keys_and_the_fidelity_teacher(teacher, student):
    one = EnsembleTargets([LiveTeacherTargets(teacher, CPU)], [1.0], [None])
    assert set(one.loader_needs(student).specs) == {"teacher_image"} and one.teacher is teacher
    two = EnsembleTargets([LiveTeacherTargets(teacher, CPU), LiveTeacherTargets(teacher, CPU, BatchKeys.of_member(1))],
                          [1, 1], [None, None])
    assert two.teacher is None  # fidelity compares the student with one teacher: not defined for an ensemble


def test_caches_of_other_samples_are_refused_naming_the_first_key(tmp_path, cache_dir, second_teacher):
    fewer = tmp_path / "fewer"
    make_cache(fewer, SyntheticPairs(12, seed=3), second_teacher, dataset_info={**DATASET_INFO, "num_samples": 12})
    with pytest.raises(UserError, match=r"teachers\[1\] cache .* and teachers\[0\] cache .* hold different samples "
                                        r"\(first differing key: 'train-000000012'\)"):
        EnsembleTargets([_cached(cache_dir, 0), _cached(fewer, 1)], [1, 1], [None, None])


def _copy_with(tmp_path, name, directory, section, **changes):
    """A copy of a cache whose manifest records other settings."""
    copy = tmp_path / name
    copy.mkdir()
    for f in directory.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(copy)
    manifest[section].update(changes)
    write_manifest(copy, manifest)
    return copy


def test_caches_with_views_drawn_otherwise_are_refused_naming_the_field(tmp_path, cache_dir, second_cache):
    reseeded = _copy_with(tmp_path, "reseeded", second_cache, "augmentation", seed=1)
    with pytest.raises(UserError, match=r"teachers\[1\] .* built differently \(augmentation.seed: 1 vs 0\)"):
        EnsembleTargets([_cached(cache_dir, 0), _cached(reseeded, 1)], [1, 1], [None, None])
    other_data = _copy_with(tmp_path, "other_data", second_cache, "dataset", seed=4, path="elsewhere")
    with pytest.raises(UserError, match=r"built differently \(dataset.seed: 4 vs 3\)"):
        EnsembleTargets([_cached(cache_dir, 0), _cached(other_data, 1)], [1, 1], [None, None])
    moved = _copy_with(tmp_path, "moved", second_cache, "dataset", path="a copy of the same files")
    EnsembleTargets([_cached(cache_dir, 0), _cached(moved, 1)], [1, 1], [None, None])  # the path alone may differ


def test_caches_whose_stored_views_differ_are_refused_naming_the_sample(cache_dir, second_cache):
    first, second = TeacherCache(cache_dir), TeacherCache(second_cache)
    refuse_unshared_views([(0, first), (1, second)])  # same data, same settings: the same views
    view = second.view.clone()
    row = int(second.rows(["train-000000004"]))
    view[row, 1, 0] += 1  # one view of one sample starts a pixel lower
    second.__dict__["view"] = view
    with pytest.raises(UserError, match=r"teachers\[1\] .* stored different views of sample 'train-000000004'"):
        refuse_unshared_views([(0, first), (1, second)])


def test_a_hybrid_member_embeds_what_its_cache_lacks_from_its_own_batch_keys(cache_dir, student, teacher,
                                                                            second_teacher):
    hybrid = open_for_training(str(cache_dir), mode="hybrid", keys=BatchKeys.of_member(1))
    ensemble = EnsembleTargets([LiveTeacherTargets(second_teacher, CPU), hybrid], [1, 1], [None, None])
    assert set(ensemble.loader_needs(student).specs) == {"teacher_image", "teacher1_image"}
    batch = _batch(SyntheticPairs(40, seed=3), student, ensemble)  # samples 20.. are not in the cache
    missing = torch.as_tensor(batch["teacher1_stored"]["missing"])
    assert missing.any() and not missing.all()
    got = ensemble(batch).members[1]
    live = LiveTeacherTargets(teacher, CPU, BatchKeys.of_member(1))(batch)
    assert torch.allclose(got.image[missing], live.image[missing], atol=1e-6)
    assert torch.allclose(got.image[~missing], live.image[~missing], atol=2e-3)


def _run_config(tmp_path, teachers) -> str:
    import yaml

    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump({
        "student": {"model": "tiny"}, "teachers": teachers,
        "data": {"kind": "synthetic", "num_samples": 20, "seed": 3, "workers": 0},
        "losses": {"clip": {}, "crd": {}, "fd": {"weight": 3.9}},
        "train": {"steps": 2, "batch_size": 10, "progress": False}, "eval": {"retrieval": "", "zero_shot": ""}}))
    return str(path)


def test_the_cli_refuses_caches_that_do_not_share_views_in_one_line(tmp_path, capsys, cache_dir, second_cache):
    from clipdistill import cli

    reseeded = _copy_with(tmp_path, "reseeded", second_cache, "augmentation", seed=1)
    config = _run_config(tmp_path, [{"source": "cache", "path": str(cache_dir)},
                                    {"source": "cache", "path": str(reseeded)}])
    assert cli.main(["train", config, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("clipdistill train: error: teachers[1] cache ")
    assert "augmentation.seed: 1 vs 0" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.parametrize("teachers, message", [
    ([], "config key 'teachers' is an empty list"),
    ([{"source": "cache", "path": "x", "wieght": 2}], "unknown config key 'teachers[0].wieght' (did you mean "
                                                       "'teachers[0].weight'?)"),
    ([{"source": "cache", "path": "x", "weight": 0}], "config key 'teachers[0]': weight and temperature must be > 0"),
    ([{"source": "openclip", "model": "tiny-teacher"}, {"source": "none"}],
     "teachers[1].source is 'none': every teacher of an ensemble needs a source"),
])
def test_the_cli_refuses_a_bad_teacher_list_in_one_line(tmp_path, capsys, teachers, message):
    from clipdistill import cli

    assert cli.main(["train", _run_config(tmp_path, teachers), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cli_refuses_teacher_beside_teachers(tmp_path, capsys):
    import yaml

    from clipdistill import cli

    config = yaml.safe_load(open(_run_config(tmp_path, [{"source": "cache", "path": "x"}])))
    config["teacher"] = {"source": "openclip", "model": "tiny-teacher"}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(tmp_path / "both.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == ("clipdistill train: error: config has both 'teacher' and 'teachers': "
                                               "put every teacher in the 'teachers' list")
    assert not (tmp_path / "run").exists()
