"""The demo's plumbing, in seconds (`--quick`). The full demo is not run by the suite (6 min); its table in README.md was measured by running it."""
import json

from clipdistill import cli, demo


def test_quick_demo_writes_summary(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("these numbers mean nothing") == 2  # before the runs and under the table
    assert "these numbers mean nothing" in (tmp_path / "summary.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["teacher", "student_kd", "student_baseline", "student_cid"]
    for name, row in summary.items():
        assert set(row) == {"retrieval_mean_recall", "zeroshot_top1", "params", "seconds"}
        assert 0 <= row["retrieval_mean_recall"] <= 100 and 0 <= row["zeroshot_top1"] <= 100
    assert summary["teacher"]["params"] > summary["student_kd"]["params"] == summary["student_baseline"]["params"]
    assert "| student_kd |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 1000
    kd_config = (tmp_path / "student_kd" / "config.yaml").read_text()
    assert "fd:" in kd_config and "icl:" in kd_config
    assert f"path: {tmp_path / 'teacher'}\n" in kd_config  # the teacher run itself is the teacher
    cid_config = (tmp_path / "student_cid" / "config.yaml").read_text()
    assert "cid_cluster:" in cid_config and "cid_instance:" in cid_config and "keep.npy" in cid_config
    assert json.loads((tmp_path / "cid" / "curated" / "report.json").read_text())["n_total"] == 256
    # CLIP-CID ran through the real commands: `clipdistill cache` of the subset, then curate and cluster on it.
    assert json.loads((tmp_path / "cid" / "cache" / "manifest.json").read_text())["count"] == 256
    assert (tmp_path / "cid" / "centroids_image.npy").is_file() and (tmp_path / "cid" / "clusters.json").is_file()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_summary_plot_labels_do_not_overlap():
    summary = {name: {"retrieval_mean_recall": value, "zeroshot_top1": value / 2, "params": 1e6, "seconds": 1}
               for name, value in (("teacher", 66.9), ("student_kd", 43.2), ("student_baseline", 38.3),
                                   ("student_cid", 38.5))}
    fig = demo.summary_figure(summary, note=demo.QUICK_NOTE)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [label.get_window_extent(renderer) for label in ax.get_xticklabels()]
        assert len(ticks) == 4
        assert not any(_overlap(a, b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
        values = [text.get_window_extent(renderer) for text in ax.texts]
        title = ax.title.get_window_extent(renderer)
        assert len(values) == 4 and not any(_overlap(v, title) for v in values)  # values stay under the title
        assert all(ax.get_window_extent(renderer).contains(v.x0, v.y1 - 1) for v in values)  # inside the axes
    assert not any(_overlap(fig._suptitle.get_window_extent(renderer), ax.title.get_window_extent(renderer))
                   for ax in fig.axes)
