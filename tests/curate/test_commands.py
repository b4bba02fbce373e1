"""The curate and cluster commands end to end, in process, on files they write themselves."""
import json

import numpy as np
import pytest

from clipdistill.cli import main
from clipdistill.curate.pseudo_labels import pseudo_labels
from clipdistill.errors import UserError
from curate.planted import planted, precision_recall, unit


def test_curate_command_writes_keep_report_and_plot(tmp_path, capsys):
    x, group = planted(n_base=2000, n_groups=200)
    np.save(tmp_path / "emb.npy", (3.0 * x).astype(np.float64))  # any float dtype, any norm
    fraction = ((group >= 0).sum() - 200) / len(x)
    rc = main(["curate", "--embeddings", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "cur"), "--clusters", "6",
               "--target-removal", f"{fraction}", "--no-progress"])
    assert rc == 0
    keep = np.load(tmp_path / "cur" / "keep.npy")
    report = json.loads((tmp_path / "cur" / "report.json").read_text())
    assert np.all(np.diff(keep) > 0) and keep.dtype == np.int64
    assert report["n_total"] == len(x) and report["n_kept"] == len(keep) and report["clusters"] == 6
    assert abs(report["removal"] - fraction) <= 0.005 and 0 < report["threshold"] < 1 and report["seconds"] > 0
    assert (tmp_path / "cur" / "report.png").stat().st_size > 1000
    precision, recall, _ = precision_recall(keep, group)
    assert precision >= 0.95 and recall >= 0.95
    assert "kept" in capsys.readouterr().out


def test_curate_command_errors_are_one_line(tmp_path, capsys):
    assert main(["curate", "--embeddings", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o")]) == 2
    assert "embeddings file not found" in capsys.readouterr().err
    np.save(tmp_path / "ints.npy", np.ones((4, 3), dtype=np.int32))
    assert main(["curate", "--embeddings", str(tmp_path / "ints.npy"), "--out", str(tmp_path / "o")]) == 2
    assert "expected a non-empty (N, D) float array" in capsys.readouterr().err


def test_pseudo_labels_recover_planted_clusters_in_every_space():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400)
    image = unit(np.eye(16)[truth * 2] * 4 + rng.standard_normal((400, 16)) * 0.3)
    text = unit(np.eye(16)[truth * 2 + 1] * 4 + rng.standard_normal((400, 16)) * 0.3)
    results = {tower: pseudo_labels(image, text, tower=tower, clusters=8) for tower in ("image", "text", "both")}
    for tower, result in results.items():
        # over-clustering (robust to k-means' local optima): every cluster is pure, i.e. holds one true class
        pairs = set(zip(result.labels.tolist(), truth.tolist()))
        assert len(pairs) == len(np.unique(result.labels)), tower
        assert result.tower_centroids["text"].shape == (8, 16)
    assert results["both"].centroids.shape == (8, 32)
    centres = results["image"].tower_centroids["image"]
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    # clustering the image space: the nearest member-mean centre is the label (k-means converged)
    assert (np.argmax(image @ centres.T, axis=1) == results["image"].labels).mean() > 0.99
    with pytest.raises(UserError, match="needs the both embeddings"):
        pseudo_labels(image, None, tower="both", clusters=4)


def test_cluster_command_files_feed_the_cid_loss(tmp_path):
    import torch

    from clipdistill import Embeddings, losses

    rng = np.random.default_rng(1)
    image = unit(rng.standard_normal((300, 8)))
    np.save(tmp_path / "img.npy", image)
    assert main(["cluster", "--embeddings", str(tmp_path / "img.npy"), "--clusters", "5", "--out",
                 str(tmp_path / "cl"), "--no-progress"]) == 0
    labels = np.load(tmp_path / "cl" / "labels.npy")
    summary = json.loads((tmp_path / "cl" / "clusters.json").read_text())
    assert labels.shape == (300,) and summary["clusters"] == 5 and summary["n"] == 300
    loss = losses.get("cid_cluster", centroids=str(tmp_path / "cl" / "centroids_image.npy"))
    t = torch.from_numpy(image[:16])
    student = Embeddings(t.clone().requires_grad_(), t.clone(), torch.tensor(1.0))
    stored = loss(student, Embeddings(t, t, torch.tensor(1.0), normalized=True,
                                      extras={"cluster": torch.from_numpy(labels[:16])}))
    on_the_fly = loss(student, Embeddings(t, t, torch.tensor(1.0), normalized=True))
    assert stored.item() == pytest.approx(on_the_fly.item(), rel=1e-5)
