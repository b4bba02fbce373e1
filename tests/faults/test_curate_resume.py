"""``clipdistill curate`` SIGKILLed three times resumes to the keep list of an uninterrupted run.

Each process kills itself at a chosen file rename (``forked_cli.curate_killed_at_rename``): every part
curate stores, and every output, lands by a rename, so the moments just before and just after one are
the ones that decide what a rerun finds. A kill anywhere else loses only work not stored yet.
The processes fork from the pre-imported server of ``test_kill_resume`` (start-up costs seconds).
"""
import json
import multiprocessing
import os
import signal

import numpy as np
import pytest

from clipdistill.cli import main
from clipdistill.curate import curate
from clipdistill.curate.resume import CHUNK_ENV, WorkDir
from curate.planted import planted
from faults import forked_cli

CHUNK = 3  # groups per stored chunk: 20 clusters make 7 chunks


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


def stored(work) -> list[str]:
    return sorted(p.name for p in work.iterdir())


def test_sigkilled_curate_resumes_to_the_uninterrupted_keep_list(tmp_path, monkeypatch, caplog):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(forked_cli.PRELOAD)
    multiprocessing.forkserver.ensure_running()  # imports while the reference runs
    x, _ = planted(n_base=2000, n_groups=200)
    embeddings = tmp_path / "emb.npy"
    np.save(embeddings, x)
    # The reference stores its pairwise scores as one chunk: chunking must not change the result either.
    assert main(["curate", *curate_args(embeddings, tmp_path / "reference")]) == 0
    expected = np.load(tmp_path / "reference" / "keep.npy")
    assert not (tmp_path / "reference" / ".work").exists()

    out = tmp_path / "killed"
    work = out / ".work"
    argv = curate_args(embeddings, out)
    # Renames of a fresh run: 1 fingerprint, 2 clustering, 3-9 the chunks' scores, 10-12 the outputs.
    killed_run(argv, rename=2, before=True)  # the clustering written, not yet renamed into place
    assert stored(work) == ["clustering.npz.tmp", "fingerprint.json"]
    killed_run(argv, rename=4, before=True)  # clustering again (1), two chunks (2, 3), the third written
    assert stored(work) == ["clustering.npz", "fingerprint.json", "scores_00000000.npz", "scores_00000003.npz",
                            "scores_00000006.npz.tmp"]
    killed_run(argv, rename=6, before=False)  # the five other chunks (1-5), then keep.npy (6) and no more
    assert len(list(work.glob("scores_*.npz"))) == 7
    assert (out / "keep.npy").exists() and not (out / "report.json").exists()

    monkeypatch.setenv(CHUNK_ENV, str(CHUNK))
    assert main(["curate", *argv]) == 0
    assert any("pairwise scores of 7 of 7 chunks reused" in m for m in caplog.messages)
    np.testing.assert_array_equal(np.load(out / "keep.npy"), expected)
    assert json.loads((out / "report.json").read_text())["n_kept"] == len(expected)
    assert sorted(p.name for p in out.iterdir()) == ["keep.npy", "report.json", "report.png"]


def test_work_left_by_other_inputs_or_arguments_is_not_reused(tmp_path, caplog):
    x, _ = planted(n_base=300, n_groups=20)
    embeddings = tmp_path / "emb.npy"
    np.save(embeddings, x)
    scores = (np.arange(4), np.ones(4, dtype=np.float32))

    def work_after_start(rows, **arguments):
        work = WorkDir(tmp_path / ".work", source=embeddings, chunk_groups=2)
        work.start(rows, {"seed": 0, **arguments})
        return work

    work_after_start(x).save_scores(0, scores)
    reused = work_after_start(x).load_scores(0)
    assert all(np.array_equal(a, b) for a, b in zip(reused, scores))
    caplog.clear()
    for changed in ({"rows": x, "seed": 1}, {"rows": x[::-1].copy()}):
        work_after_start(**changed).save_scores(0, scores)
        work = work_after_start(x)  # back to the first inputs: what the changed run left is not trusted
        assert work.load_scores(0) is None
    stat = embeddings.stat()  # the same rows, written again: a newer modification time
    os.utime(embeddings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert work_after_start(x).load_scores(0) is None
    assert sum("starting over" in m for m in caplog.messages) == 5


@pytest.mark.parametrize("mode", ["cid", "semdedup"])
def test_scores_stored_in_chunks_and_reused_give_the_same_keep_list(tmp_path, caplog, mode):
    x, _ = planted(n_base=1000, n_groups=100)
    np.save(tmp_path / "emb.npy", x)
    expected = curate(x, mode=mode, clusters=8, target_removal=0.05)
    for attempt in ("computed", "reused"):
        work = WorkDir(tmp_path / ".work", source=tmp_path / "emb.npy", chunk_groups=3)
        result = curate(x, mode=mode, clusters=8, target_removal=0.05, work=work)
        np.testing.assert_array_equal(result.keep, expected.keep, err_msg=attempt)
        assert result.threshold == expected.threshold
        assert len(list(work.path.glob("scores_*.npz"))) == 3  # 8 groups, 3 a chunk
    assert any("pairwise scores of 3 of 3 chunks reused" in m for m in caplog.messages)
