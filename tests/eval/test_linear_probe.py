"""Linear probe: CLIP_benchmark's training reproduced exactly, oracles, the feature cache."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from clipdistill.eval.linear_probe import (WEIGHT_DECAYS, evaluate_linear_probe, linear_probe_metrics,
                                           train_linear, validation_split)


def _clusters(num_classes, per_class, dim=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = F.normalize(centers[labels] + noise * torch.randn(len(labels), dim, generator=g), dim=1)
    return features, labels


def _clip_benchmark_train(features, labels, num_classes, weight_decay, lr, epochs, batch_size, seed):
    """clip_benchmark.metrics.linear_probe.train on CPU, written out naively (per-sample collate)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(list(zip(features, labels)), batch_size=batch_size, shuffle=True)
    steps = epochs * len(loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1 + np.cos(np.pi * (i + epoch * len(loader)) / steps)) * lr
            optimizer.zero_grad()
            torch.nn.CrossEntropyLoss()(model(x), y).backward()
            optimizer.step()
    return model


def test_training_equals_clip_benchmarks_loop():
    features, labels = _clusters(5, 30, noise=0.8)
    ours = train_linear(features, labels, 5, weight_decay=1e-3, lr=0.1, epochs=3, batch_size=16, seed=4)
    reference = _clip_benchmark_train(features, labels, 5, 1e-3, 0.1, 3, 16, 4)
    torch.testing.assert_close(ours.weight, reference.weight, rtol=0, atol=1e-6)


def test_separable_features_are_probed_perfectly():
    train_x, train_y = _clusters(6, 20, seed=1)
    test_x, test_y = _clusters(6, 10, seed=1)  # same centers, fresh noise
    metrics = linear_probe_metrics(train_x, train_y, test_x, test_y, epochs=5)
    assert metrics["lp_acc1"] == 1.0 and metrics["lp_acc5"] == 1.0 and metrics["lp_mean_per_class_recall"] == 1.0


def test_random_labels_give_chance_and_small_sets_have_no_acc5():
    train_x, _ = _clusters(4, 50, seed=2)
    test_x, _ = _clusters(4, 100, seed=3)
    g = torch.Generator().manual_seed(0)
    metrics = linear_probe_metrics(train_x, torch.randint(4, (200,), generator=g), test_x,
                                   torch.randint(4, (400,), generator=g), epochs=3)
    assert 0.15 < metrics["lp_acc1"] < 0.35
    assert math.isnan(metrics["lp_acc5"])  # fewer than 6 classes: CLIP_benchmark reports NaN


def test_weight_decay_search_picks_a_grid_value_and_split_is_a_partition():
    train_rows, val_rows = validation_split(90, 0.2, seed=0)
    assert len(val_rows) == 18 and sorted(torch.cat([train_rows, val_rows]).tolist()) == list(range(90))
    x, y = _clusters(3, 30, noise=0.3)
    metrics = linear_probe_metrics(x[train_rows], y[train_rows], x, y, x[val_rows], y[val_rows], epochs=2)
    assert metrics["weight_decay"] in WEIGHT_DECAYS


def test_features_are_cached_and_reused(tmp_path, oracle_encoder, class_set):
    data = class_set(6, 4)
    first = evaluate_linear_probe(oracle_encoder, data, data, feature_cache=tmp_path, epochs=5, val_proportion=0)
    assert (tmp_path / "train.safetensors").is_file() and (tmp_path / "test.safetensors").is_file()
    assert first["lp_acc1"] == 1.0

    class Broken:  # any encoding attempt would fail: the cache must be read instead
        image_spec = oracle_encoder.image_spec

    assert evaluate_linear_probe(Broken(), data, data, feature_cache=tmp_path, epochs=5, val_proportion=0) == first
