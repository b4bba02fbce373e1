"""The demo's plumbing, in seconds (`--quick`). The full demo is not run by the suite (6 min); its table in README.md was measured by running it."""
import json

from clipdistill import cli


def test_quick_demo_writes_summary(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["teacher", "student_kd", "student_baseline", "student_cid"]
    for name, row in summary.items():
        assert set(row) == {"retrieval_mean_recall", "zeroshot_top1", "params", "seconds"}
        assert 0 <= row["retrieval_mean_recall"] <= 100 and 0 <= row["zeroshot_top1"] <= 100
    assert summary["teacher"]["params"] > summary["student_kd"]["params"] == summary["student_baseline"]["params"]
    assert "| student_kd |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 1000
    kd_config = (tmp_path / "student_kd" / "config.yaml").read_text()
    assert "fd:" in kd_config and "icl:" in kd_config and "teacher.pt" in kd_config
    cid_config = (tmp_path / "student_cid" / "config.yaml").read_text()
    assert "cid_cluster:" in cid_config and "cid_instance:" in cid_config and "keep.npy" in cid_config
    assert json.loads((tmp_path / "cid" / "curated" / "report.json").read_text())["n_total"] == 256
