"""bench/planted_redundancy.py: the planted copies and their ground truth, the removal judge, and ε chosen
on a labelled pool without any target fraction."""
import numpy as np
import pytest

from bench_scripts import load_bench_script
from clipdistill.curate import curate
from clipdistill.data.csv_pairs import CsvPairs
from clipdistill.data.synthetic import SyntheticPairs, paraphrases

planted = load_bench_script("planted_redundancy")


def test_plan_has_the_asked_copies_one_original_per_scene_and_a_heavy_tail():
    plan = planted.plan_rows(2000, 0.4, seed=3)
    sizes = np.bincount(plan.group)
    assert plan.redundant.sum() == 800 and len(sizes) == 1200  # 40 % of the rows are copies of 1 200 scenes
    assert np.all(np.bincount(plan.group[plan.copy == 0], minlength=1200) == 1)  # exactly one original each
    for g in np.flatnonzero(sizes > 1)[:50]:
        assert sorted(plan.copy[plan.group == g]) == list(range(sizes[g]))
    copied = sizes[sizes > 1] - 1
    assert np.mean(copied == 1) > 0.4 and copied.max() >= 20  # Zipf: mostly one copy, a few dozens
    assert copied.max() <= planted.MAX_COPIES
    # Shuffled: the copies are spread over the rows, not appended at the end.
    assert 0.3 < plan.redundant[:1000].mean() / plan.redundant.mean() * 0.5 < 0.7
    assert not np.array_equal(planted.plan_rows(2000, 0.4, seed=4).group, plan.group)
    clean = planted.plan_rows(100, 0.0, seed=0)
    assert np.all(clean.copy == 0) and sorted(clean.group) == list(range(100))


def test_written_set_is_the_plan_originals_are_the_corpus_and_copies_are_near_copies(tmp_path):
    plan = planted.plan_rows(30, 0.4, seed=0)
    csv_path = planted.write_set(tmp_path, plan, data_seed=0)
    pairs = CsvPairs(str(csv_path))
    assert len(pairs) == 30 and len(list((tmp_path / "images").glob("*.jpg"))) == 30
    truth = planted.read_plan(tmp_path)
    assert np.array_equal(truth.group, plan.group) and np.array_equal(truth.copy, plan.copy)
    corpus = SyntheticPairs(100, seed=0, image_size=planted.IMAGE_PX)
    undo = {s: w for w, synonyms in planted.SYNONYMS.items() for s in synonyms}
    for r in range(30):
        group, copy, sample = int(plan.group[r]), int(plan.copy[r]), pairs[r]
        scene = corpus.scene(group)
        if copy == 0:  # the synthetic training sample itself, through a quality-95 JPEG
            assert sample["caption"] == corpus[group]["caption"]
            diff = np.abs(np.asarray(sample["image"], float) - np.asarray(corpus[group]["image"], float)).mean()
            assert diff < 6
        else:  # a true caption of the same scene, some words swapped for synonyms
            assert " ".join(undo.get(w, w) for w in sample["caption"].split()) in paraphrases(scene)
            assert min(sample["image"].size) < planted.IMAGE_PX + 1
    rng = np.random.default_rng(0)
    scene = corpus.scene(5)
    moved = planted.jittered(scene, rng)
    for a, b in zip(scene.objects, moved.objects):
        assert (a.color, a.shape, a.size) == (b.color, b.shape, b.size)
        assert max(abs(p - q) for p, q in zip(a.center, b.center)) <= 0.04 * planted.IMAGE_PX + 1e-9
        assert abs(b.half / a.half - 1) <= 0.07 + 1e-9


def test_removal_quality_counts_at_most_all_but_one_per_group():
    plan = planted.Plan(group=np.array([0, 0, 0, 1, 1, 2]), copy=np.array([0, 1, 2, 0, 1, 0]))
    judge = planted.removal_quality
    assert judge(np.array([0, 3, 5]), plan) == {"kept": 3, "removed": 3, "removal": 0.5, "precision": 1.0,
                                                "recall": 1.0, "scenes_lost": 0}
    # Keeping a copy instead of the original is as good; losing group 1 whole costs one false removal.
    q = judge(np.array([2, 5]), plan)
    assert (q["precision"], q["recall"], q["scenes_lost"]) == (0.75, 1.0, 1)
    q = judge(np.array([0, 1, 3, 4]), plan)  # removed one copy and a singleton scene
    assert (q["precision"], q["recall"], q["scenes_lost"]) == (0.5, 1 / 3, 1)
    assert judge(np.arange(6), plan)["precision"] == 1.0 and judge(np.arange(6), plan)["recall"] == 0.0


def toy_embeddings(plan, noise, dim=32, seed=0):
    """One random unit vector per scene; rows are their scene's vector plus Gaussian noise of that size."""
    rng = np.random.default_rng(seed)
    scenes = rng.standard_normal((plan.group.max() + 1, dim))
    x = scenes[plan.group] / np.sqrt(dim) + noise * rng.standard_normal((len(plan.group), dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_epsilon_from_a_labelled_pool_separates_copies_whatever_the_fraction(tmp_path):
    pool = planted.plan_rows(200, 0.3, seed=1)
    x = toy_embeddings(pool, 0.05)
    # most=16 of the 199 cuts: the widest gaps must be among them, or a separable pool's best cut is lost.
    eps, sweep = planted.choose_epsilon(x, pool, mode="cid", work_dir=tmp_path / "w", most=16)
    assert len(sweep) <= 17
    best = next(s for s in sweep if s["epsilon"] == eps)
    assert best["precision"] == 1.0 and best["recall"] == 1.0
    # The cut lies in the gap between the closest distinct scenes and the farthest copies.
    sims, same = x @ x.T, pool.group[:, None] == pool.group[None, :]
    np.fill_diagonal(sims, np.nan)
    assert np.nanmax(np.where(same, np.nan, sims)) < 1 - eps < np.nanmin(np.where(same, sims, np.nan))
    # Applied to other data with a different share of copies (40 %, 10 %), it removes exactly the copies.
    for fraction, seed in ((0.4, 2), (0.1, 3)):
        plan = planted.plan_rows(300, fraction, seed=seed)
        keep = curate(toy_embeddings(plan, 0.05, seed=seed), threshold=eps).keep
        quality = planted.removal_quality(keep, plan)
        assert quality["precision"] == 1.0 and quality["recall"] == 1.0
        assert quality["removed"] == int(round(fraction * 300))


@pytest.mark.parametrize("mode", ["cid", "semdedup"])
def test_chosen_epsilon_is_the_best_f1_of_any_threshold(tmp_path, mode):
    """Where copies and distinct scenes overlap, no ε on a fine grid beats the chosen one."""
    pool = planted.plan_rows(200, 0.3, seed=5)
    x = toy_embeddings(pool, 0.6, dim=8, seed=5)
    eps, sweep = planted.choose_epsilon(x, pool, mode=mode, work_dir=tmp_path / "w")
    chosen = next(s for s in sweep if s["epsilon"] == eps)
    assert 0 < chosen["precision"] < 1 or 0 < chosen["recall"] < 1  # a real trade-off, not a separable toy
    for grid_eps in np.linspace(0.0, 0.6, 31):
        q = planted.removal_quality(curate(x, mode=mode, threshold=float(grid_eps)).keep, pool)
        assert planted.f1(q) <= chosen["f1"] + 1e-9
    assert chosen["f1"] == max(s["f1"] for s in sweep)


def test_help_answers(capsys):
    with pytest.raises(SystemExit) as exit_:
        planted.main(["--help"])
    assert exit_.value.code == 0 and "--redundant" in capsys.readouterr().out


@pytest.mark.slow
def test_whole_bench_runs_small_and_its_table_adds_up(tmp_path):
    """The whole pipeline at toy size (a 2-step teacher, 3-step students): sets, caches, ε, curation, arms."""
    import json

    out = tmp_path / "run"
    planted.main(["--out", str(out), "--rows", "80", "--pool-rows", "60", "--eval-images", "40", "--teacher-steps",
                  "2", "--student-steps", "3", "--seeds", "0,1", "--batch-size", "8"])
    result = json.loads((out / "planted.json").read_text())
    arms = result["arms"]
    assert list(arms) == list(planted.ARMS)
    assert arms["oracle"]["quality"] == {"kept": 48, "removed": 32, "removal": 0.4, "precision": 1.0,
                                         "recall": 1.0, "scenes_lost": 0}
    assert arms["random"]["quality"]["kept"] == arms["cid"]["quality"]["kept"]
    assert arms["full"]["quality"]["removed"] == 0 and arms["clean_full"]["quality"]["removed"] == 0
    for arm in planted.ARMS:
        assert len(arms[arm]["recall"]["per_seed"]) == 2
    for mode in ("cid", "semdedup"):  # the curated set is `clipdistill curate --threshold ε` of the planted set
        report = json.loads((out / f"curated_{mode}" / "report.json").read_text())
        assert report["threshold"] == pytest.approx(result["epsilon"][mode]) and report["mode"] == mode
        assert report["n_kept"] == arms[mode]["quality"]["kept"]
    assert result["pool"]["cid"]["f1"] == max(s["f1"] for s in result["sweeps"]["cid"])
    random_lists = [np.load(out / "keep" / f"random_seed{s}.npy") for s in (0, 1)]
    assert not np.array_equal(*random_lists)  # a new random subset per seed
    assert "ε chosen on the labelled pool" in (out / "planted.md").read_text()


def test_similarity_profile_separates_copies_from_other_scenes():
    plan = planted.plan_rows(300, 0.4, seed=0)
    profile = planted.similarity_profile(toy_embeddings(plan, 0.05), plan)
    assert profile["copy_to_its_original"][0] > 0.99 > 0.8 > profile["nearest_other_original"][-1]
    assert "copy_to_its_original" not in planted.similarity_profile(toy_embeddings(plan, 0.05),
                                                                   planted.plan_rows(300, 0.0, seed=0))
