"""bench/ablation.py --seeds: one teacher, cache and CID data; each student once per seed; mean ± sd.

The training is faked (``run`` returns figures that depend on the method and the seed); what is tested is
which runs the script asks for, where, with which seed, and the arithmetic of the report.
"""
import json
import statistics
from types import SimpleNamespace

import pytest

from bench_scripts import load_bench_script


@pytest.fixture()
def ablation():
    return load_bench_script("ablation")


def results(mean_recall: float) -> dict:
    """A results.json as the trainer writes it: fractions; R@k made distinct from the mean."""
    metrics = {"retrieval_mean_recall": mean_recall}
    metrics.update({k: mean_recall + i / 100 for i, k in enumerate(load_bench_script("ablation").RECALLS)})
    return {"metrics": metrics, "seconds": 10.0}


def test_aggregate_is_the_mean_and_sample_sd_of_each_figure(ablation):
    rows = {seed: ablation.row(results(value)) for seed, value in {0: 0.20, 1: 0.26, 2: 0.23}.items()}
    table = ablation.aggregate(rows)
    assert table["retrieval_mean_recall"] == pytest.approx(23.0)
    assert table["sd"]["retrieval_mean_recall"] == pytest.approx(statistics.stdev([20.0, 26.0, 23.0]))  # 3.0
    assert table["sd"]["retrieval_mean_recall"] == pytest.approx(3.0)
    assert table["image_retrieval_recall@5"] == pytest.approx(23.0 + 1)
    assert table["seeds"]["1"]["retrieval_mean_recall"] == pytest.approx(26.0)
    one = ablation.aggregate({0: rows[0]})
    assert one["retrieval_mean_recall"] == pytest.approx(20.0) and one["sd"]["retrieval_mean_recall"] is None
    assert ablation.mean_sd(table, "retrieval_mean_recall") == "23.0 ± 3.0"
    assert ablation.mean_sd(one, "retrieval_mean_recall") == "20.0"


def row_of(ablation, values: dict) -> dict:
    return ablation.aggregate({seed: ablation.row(results(v / 100)) for seed, v in values.items()})


def test_paired_difference_is_taken_seed_by_seed_and_real_only_when_seeds_agree(ablation):
    base = row_of(ablation, {0: 20.0, 1: 24.0, 2: 22.0})
    steady = ablation.paired_difference(row_of(ablation, {0: 21.0, 1: 25.5, 2: 23.0}), base)
    assert steady["per_seed"] == pytest.approx([1.0, 1.5, 1.0]) and steady["mean"] == pytest.approx(7 / 6)
    assert steady["real"]  # unpaired, 22.0 ± 2.0 vs 23.2 ± 2.3 would look like a tie
    flips = ablation.paired_difference(row_of(ablation, {0: 23.0, 1: 23.0, 2: 23.0}), base)
    assert flips["per_seed"] == pytest.approx([3.0, -1.0, 1.0]) and not flips["real"]
    noisy = ablation.paired_difference(row_of(ablation, {0: 20.1, 1: 28.0, 2: 22.1}), base)  # same sign, mean 1.4 < 2 SE
    assert noisy["mean"] == pytest.approx(1.4) and not noisy["real"]
    one_seed = ablation.paired_difference(row_of(ablation, {1: 30.0}), base)
    assert one_seed["seeds"] == ["1"] and one_seed["mean"] == pytest.approx(6.0) and not one_seed["real"]
    assert ablation.paired_difference(row_of(ablation, {5: 30.0}), base) is None
    assert ablation.difference_cell(steady) == "+1.2 ± 0.3 (real)" and ablation.difference_cell(one_seed) == "+6.0"


@pytest.mark.parametrize("text", ["0,x", "1,1", "-1", ""])
def test_bad_seed_lists_stop_with_one_line(ablation, text):
    with pytest.raises(SystemExit, match="--seeds expects"):
        ablation.seed_list(text)


def fake_pipeline(ablation, monkeypatch, tmp_path):
    """The script's heavy steps replaced: the teacher, the cache and the CID data are counted, runs faked."""
    calls = {"teacher": 0, "cache": 0, "cid": 0, "runs": []}

    def train_teacher(setup, out, progress):
        calls["teacher"] += 1
        return {"teacher": {"source": "checkpoint", "path": str(out / "teacher")}}, results(0.5)

    def cached_teacher(setup, out, teacher, views, progress):
        calls["cache"] += 1
        return {"teacher": {"source": "cache", "path": str(out / "teacher_cache")}}

    def prepare_cid(setup, out, teacher, progress):
        calls["cid"] += 1
        return SimpleNamespace(keep=tmp_path / "keep.npy", random_keep=tmp_path / "random.npy",
                               centroids=tmp_path / "c.npy")

    def run(cfg, run_dir, overwrite=False):
        method, seed = run_dir.name, cfg.train.seed
        if run_dir.exists() and not overwrite:  # as the loop's open_run_directory refuses a used directory
            raise SystemExit(f"{run_dir} holds a run")
        calls["runs"].append((str(run_dir.relative_to(tmp_path)), seed, sorted(cfg.losses)))
        value = {"baseline": 0.20, "crd": 0.25, "cid_full": 0.24}[method] + 0.01 * seed
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps(results(value)))
        return results(value)

    for name, fake in (("train_teacher", train_teacher), ("cached_teacher", cached_teacher),
                       ("prepare_cid", prepare_cid), ("run", run)):
        monkeypatch.setattr(ablation, name, fake)
    return calls


def test_each_student_runs_once_per_seed_and_the_report_gives_mean_and_sd(ablation, monkeypatch, tmp_path):
    calls = fake_pipeline(ablation, monkeypatch, tmp_path)
    command = ["--data", "synthetic", "--out", str(tmp_path), "--methods", "baseline,crd,cid_full", "--seeds", "0,1,2"]
    ablation.main(command)
    assert (calls["teacher"], calls["cache"], calls["cid"]) == (1, 1, 1)  # made once, for every seed
    assert [(d, s) for d, s, _ in calls["runs"]] == [
        ("baseline", 0), ("crd", 0), ("cid_full", 0),  # seed 0 keeps the single-seed paths
        ("seed1/baseline", 1), ("seed1/crd", 1), ("seed1/cid_full", 1),
        ("seed2/baseline", 2), ("seed2/crd", 2), ("seed2/cid_full", 2)]
    assert calls["runs"][1][2] == ["clip", "crd"] and calls["runs"][2][2] == ["cid_cluster", "cid_instance", "clip"]

    table = json.loads((tmp_path / "ablation.json").read_text())
    assert list(table) == ["teacher", "baseline", "crd", "cid_full"]
    crd = table["crd"]
    assert [crd["seeds"][s]["retrieval_mean_recall"] for s in "012"] == pytest.approx([25.0, 26.0, 27.0])
    assert crd["retrieval_mean_recall"] == pytest.approx(26.0) and crd["sd"]["retrieval_mean_recall"] == pytest.approx(1.0)
    assert table["teacher"]["sd"]["retrieval_mean_recall"] is None and list(table["teacher"]["seeds"]) == ["0"]
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| crd | 3 | **26.0 ± 1.0** | +5.0 ± 0.0 (real) |" in markdown and "| teacher | 1 | **50.0** |  |" in markdown
    assert table["crd"]["vs_baseline"]["per_seed"] == pytest.approx([5.0, 5.0, 5.0])
    assert (tmp_path / "ablation.png").stat().st_size > 0

    # Killed and rerun with one more seed: only the new seed's students train; the table covers all four.
    # A student killed before it finished (a directory without results.json) is trained again from scratch.
    (tmp_path / "seed3" / "crd").mkdir(parents=True)
    (tmp_path / "seed3" / "crd" / "train.log").write_text("killed at step 120\n")
    calls["runs"].clear()
    ablation.main(command[:-1] + ["0,1,2,3"])
    assert [d for d, _, _ in calls["runs"]] == ["seed3/baseline", "seed3/crd", "seed3/cid_full"]
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert table["baseline"]["retrieval_mean_recall"] == pytest.approx(21.5)  # 20, 21, 22, 23
    assert table["baseline"]["sd"]["retrieval_mean_recall"] == pytest.approx(statistics.stdev([20, 21, 22, 23]))


def test_unknown_method_stops_before_any_training(ablation, monkeypatch, tmp_path):
    calls = fake_pipeline(ablation, monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="unknown method"):
        ablation.main(["--out", str(tmp_path), "--methods", "baseline,crdd"])
    assert calls["teacher"] == 0


def test_flickr_csv_has_one_row_per_caption_of_the_chosen_train_images(ablation, tmp_path):
    captions = [f"a.jpg#{i}\tdog {i}" for i in range(6)] + ["b.jpg#0\tcat", "c.jpg#0\tbird"]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(captions) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")  # c.jpg is not a train image
    path = tmp_path / "train.csv"
    path.write_text("stale contents\n")
    assert ablation.write_flickr_csv(tmp_path, path) == 6  # a.jpg's first 5 captions, b.jpg's one
    rows = path.read_text().splitlines()
    assert rows[0] == "filepath\ttitle" and rows[1].endswith("a.jpg\tdog 0") and rows[-1].endswith("b.jpg\tcat")
    assert ablation.write_flickr_csv(tmp_path, path, images=1) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if "csv" in p.name) == ["train.csv"]  # no partial file left
