"""``clipdistill curate`` SIGKILLed three times resumes to the keep list of an uninterrupted run.

Each process kills itself at a chosen file rename (``forked_cli.curate_killed_at_rename``): every part
curate stores whole (centroids, each chunk's progress record, each batch of cells, each output) lands
by a rename, so the moments just before and just after one are the ones that decide what a rerun
finds; the member lists between two progress records are appended, and a kill there is cut back.
The processes fork from the pre-imported server of ``test_kill_resume`` (start-up costs seconds).
"""
import json
import multiprocessing
import os
import signal

import numpy as np
from clipdistill.cli import main
from clipdistill.curate import curate
from clipdistill.curate.resume import CHUNK_ENV, RECORD, WorkDir
from clipdistill.curate.sources import BLOCK, NpyRows
from curate.planted import planted
from faults import forked_cli

CHUNK = 300  # member rows per batch of cells: ~2 250 rows make 8 batches


def curate_args(embeddings, out):
    return ["--embeddings", str(embeddings), "--out", str(out), "--clusters", "20", "--target-removal", "0.1",
            "--no-progress"]


def killed_run(argv, rename: int, before: bool) -> None:
    context = multiprocessing.get_context("forkserver")
    process = context.Process(target=forked_cli.curate_killed_at_rename, args=(argv, rename, before, CHUNK))
    process.start()
    process.join(timeout=120)
    if process.is_alive():
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGKILL, f"expected a SIGKILL at rename {rename}, got {process.exitcode}"


def stored(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_sigkilled_curate_resumes_to_the_uninterrupted_keep_list(tmp_path, monkeypatch, caplog):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(forked_cli.PRELOAD)
    multiprocessing.forkserver.ensure_running()  # imports while the reference runs
    x, _ = planted(n_base=2000, n_groups=200)
    embeddings = tmp_path / "emb.npy"
    np.save(embeddings, x)
    monkeypatch.setenv(CHUNK_ENV, str(CHUNK))
    assert main(["curate", *curate_args(embeddings, tmp_path / "reference")]) == 0
    expected = np.load(tmp_path / "reference" / "keep.npy")
    assert not (tmp_path / "reference" / ".work").exists()
    batches = -(-len(x) // CHUNK)
    assert len(x) < BLOCK  # one chunk of rows: renames 1 fingerprint, 2 centroids, 3 progress, 4.. batches

    out = tmp_path / "killed"
    work = out / ".work"
    argv = curate_args(embeddings, out)
    killed_run(argv, rename=3, before=True)  # the members appended, their progress record not renamed in
    assert "progress.json.tmp" in stored(work / "members") and "progress.json" not in stored(work / "members")
    assert (work / "centroids.npy").exists() and not list((work / "cells").iterdir())
    killed_run(argv, rename=4, before=False)  # members cut back and appended again (1), three batches (2-4)
    assert len(list((work / "cells").glob("batch_*.npz"))) == 3
    records = sum(len(np.fromfile(f, dtype=RECORD)) for f in (work / "members").glob("batch_*.bin"))
    assert len(x) <= records < 2 * len(x)  # the unrecorded append was cut back, not kept twice
    killed_run(argv, rename=batches - 2, before=False)  # the other batches, then keep.npy, and no more
    assert len(list((work / "cells").glob("batch_*.npz"))) == batches
    assert (out / "keep.npy").exists() and not (out / "report.json").exists()

    assert main(["curate", *argv]) == 0
    assert any(f"{batches} of {batches} batches reused" in m for m in caplog.messages)
    np.testing.assert_array_equal(np.load(out / "keep.npy"), expected)
    assert json.loads((out / "report.json").read_text())["n_kept"] == len(expected)
    assert sorted(p.name for p in out.iterdir()) == ["keep.npy", "report.json", "report.png"]


def test_a_truncated_or_stale_cell_file_is_computed_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CHUNK_ENV, "400")
    x, _ = planted(n_base=1000, n_groups=100)
    expected = curate(x, clusters=8, target_removal=0.05)
    work = WorkDir(tmp_path / ".work")
    curate(x, clusters=8, target_removal=0.05, work=work)
    files = sorted((tmp_path / ".work" / "cells").glob("batch_*.npz"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # half-written (a crash, a copy cut short)
    files[1].write_bytes(files[2].read_bytes())  # another batch's result under this name
    caplog.clear()
    result = curate(x, clusters=8, target_removal=0.05, work=work)
    np.testing.assert_array_equal(result.keep, expected.keep)
    assert result.threshold == expected.threshold
    assert sum("is unreadable" in m for m in caplog.messages) == 1
    assert sum("computed from other member lists" in m for m in caplog.messages) == 1
    assert any(f"{len(files) - 2} of {len(files)} batches reused" in m for m in caplog.messages)


def test_work_left_by_other_inputs_or_arguments_is_not_reused(tmp_path, caplog):
    x, _ = planted(n_base=300, n_groups=20)
    embeddings = tmp_path / "emb.npy"
    np.save(embeddings, x)
    work = WorkDir(tmp_path / ".work")

    def run(seed=0):
        return curate(NpyRows(embeddings), clusters=3, threshold=0.02, seed=seed, work=work).keep

    expected = run()
    for change in ("nothing", "seed", "rows", "mtime"):
        caplog.clear()
        if change == "rows":
            np.save(embeddings, x[::-1].copy())  # same size, other rows
        if change == "mtime":
            stat = embeddings.stat()
            os.utime(embeddings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        keep = run(seed=1 if change == "seed" else 0)
        starting_over = any("starting over" in m for m in caplog.messages)
        assert starting_over == (change != "nothing"), change
        if change == "nothing":
            assert any("resuming" in m for m in caplog.messages)
            np.testing.assert_array_equal(keep, expected)
