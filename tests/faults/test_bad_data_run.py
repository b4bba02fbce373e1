"""A whole training run over a listing that holds every kind of bad input: it completes, and
results.json counts each kind; past data.max_bad_fraction it stops with the summary."""
import json

from clipdistill import cli
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
