"""A whole training run over a listing that holds every kind of bad input: it completes, and
results.json counts each kind; past data.max_bad_fraction it stops with the summary."""
import json

from clipdistill import cli
from clipdistill.train import checkpoint
from faults.corpus import IMAGES, jpeg

GOOD = 40


def write_corpus(folder):
    rows = []
    for i in range(GOOD):
        (folder / f"good{i}.jpg").write_bytes(jpeg((6 * i, 100, 200 - 4 * i)))
        rows.append(f"good{i}.jpg\ta shape number {i}".encode())
    for name, (make, _) in IMAGES.items():
        (folder / name).write_bytes(make())
        rows.append(f"{name}\ta picture named {name}".encode())
    rows += [b"gone.jpg\ta missing file", b"good0.jpg\tcaf\xe9 au lait", b"good1.jpg\t" + b"long " * 2000,
             b"good2.jpg\textra\tfield", b"good3.jpg\t  "]
    path = folder / "pairs.tsv"
    path.write_bytes(b"filepath\ttitle\n" + b"\n".join(rows) + b"\n")
    return path


def train(tmp_path, *overrides):
    config = tmp_path / "c.yaml"
    config.write_text("train: {progress: false}\n")
    return cli.main(["train", str(config), "--out", str(tmp_path / "run"), "student.model=tiny", "data.kind=csv",
                     f"data.path={write_corpus(tmp_path)}", "data.workers=0", "train.batch_size=8", "train.steps=8",
                     "train.save_every=8", "eval.retrieval=", "eval.zero_shot=", *overrides])


def test_run_completes_and_counts_every_kind(tmp_path, capsys):
    assert train(tmp_path, "data.max_bad_fraction=0.5") == 0
    bad = json.loads((tmp_path / "run" / "results.json").read_text())["bad_samples"]
    # 8 steps x 8 slots over 50 usable rows (6 steps an epoch): with seed 0 every bad file is drawn.
    assert set(bad) == {"corrupt_image", "empty_file", "decompression_bomb", "missing_file", "malformed_row",
                        "empty_caption"}
    assert bad["malformed_row"] == 1 and bad["empty_caption"] == 1
    assert bad["corrupt_image"] >= 2 and min(bad.values()) >= 1


def test_too_many_bad_rows_stop_the_run_with_the_summary(tmp_path, capsys):
    assert train(tmp_path, "data.max_bad_fraction=0.01") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.max_bad_fraction=0.01" in err
    assert "'malformed_row': 1" in err and "'empty_caption': 1" in err


def test_past_max_bad_fraction_the_run_stops_keeps_its_checkpoint_and_resumes_below_the_limit(tmp_path, capsys,
                                                                                               caplog):
    # About 1 draw in 12 is a bad file. Batches of 32: the fraction is first judged on the 6th batch (200
    # samples attempted), before step 6 trains: the checkpoints of steps 2 and 4 exist.
    big = ["train.batch_size=32", "train.save_every=2", "train.keep_checkpoints=2"]
    assert train(tmp_path, *big, "data.max_bad_fraction=0.05") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("clipdistill train: error: ")
    bad_count, attempted = (int(n) for n in err.split(" samples unreadable")[0].split()[-3::2])
    assert 200 <= attempted < 240 and f"({bad_count / attempted:.1%} > data.max_bad_fraction=0.05)" in err
    assert "raise data.max_bad_fraction" in err
    for kind in ("corrupt_image", "empty_file", "decompression_bomb", "missing_file"):
        assert f"'{kind}': " in err
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    assert not (tmp_path / "run" / "results.json").exists()
    saved = checkpoint.load(checkpoints / "step_00000004.pt")
    assert saved["step"] == 4 and sum(saved["bad_data"]["counts"].values()) < bad_count

    # Raising the limit, the same command resumes from that checkpoint and completes.
    assert train(tmp_path, *big, "data.max_bad_fraction=0.2", "resume=latest") == 0
    assert any("resumed from" in m and "step_00000004.pt" in m for m in caplog.messages)
    bad = json.loads((tmp_path / "run" / "results.json").read_text())["bad_samples"]
    final = checkpoint.load(checkpoints / "step_00000008.pt")["bad_data"]
    # Rows a CSV drops while being read are counted too (read again on every start, so not saved).
    assert bad == {**final["counts"], "malformed_row": 1, "empty_caption": 1}
    assert sum(final["counts"].values()) / (final["good"] + sum(final["counts"].values())) > 0.05
