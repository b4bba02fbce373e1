"""Linear probe, step for step as CLIP_benchmark runs it (``clip_benchmark/metrics/linear_probe.py``).

Frozen, L2-normalized image features are computed once (and optionally cached to disk); a linear
layer is trained on them with AdamW (lr 0.1, 10 epochs, batch 64, cosine schedule, no warmup). The
weight decay is chosen on a validation split carved from train, by CLIP_benchmark's search: 7 values
on ``logspace(-6, 2, 97)``, then a shrinking three-point search around the best (spans 8, 4, 2, 1).
The final layer is trained on train + validation with that decay and scored on test.

Every random draw happens in CLIP_benchmark's order (``torch.manual_seed(seed)``, then a permutation
of the train rows, then a re-seed before each training), so given the same features the metrics
agree to float precision (``bench/parity_clip_benchmark.py``). Metric names are CLIP_benchmark's:
``lp_acc1``, ``lp_acc5`` (NaN with fewer than 6 classes, as there), ``lp_mean_per_class_recall``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm import tqdm

from clipdistill.errors import UserError
from clipdistill.eval.encode import encode_labeled_images
from clipdistill.eval.zero_shot import classification_metrics

WEIGHT_DECAYS = np.logspace(-6, 2, num=97).tolist()
FIRST_PROBES = [i for i, value in enumerate(WEIGHT_DECAYS) if value in np.logspace(-6, 2, num=7).tolist()]


class _Rows(torch.utils.data.Dataset):
    """Feature rows indexed a whole batch at a time (one tensor gather, no per-sample collate)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows):
        return self.features[rows], self.labels[rows]


def _batches(features, labels, batch_size: int, shuffle: bool) -> DataLoader:
    # A RandomSampler inside a DataLoader draws from the global RNG exactly as CLIP_benchmark's
    # DataLoader(shuffle=True) does, so batches come in the same order.
    rows = _Rows(features, labels)
    sampler = RandomSampler(rows) if shuffle else SequentialSampler(rows)
    return DataLoader(rows, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


def _cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    return 0.5 * (1 + np.cos(np.pi * step / total_steps)) * base_lr


def train_linear(features, labels, num_classes: int, *, weight_decay: float, lr: float, epochs: int,
                 batch_size: int, seed: int) -> torch.nn.Linear:
    """A linear classifier trained with AdamW and cross-entropy, CLIP_benchmark's ``train``."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = _batches(features, labels, batch_size, shuffle=True)
    total = epochs * len(loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(lr, i + epoch * len(loader), total)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model


def _logits(model: torch.nn.Linear, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(features)


def _val_acc1(model, features, labels) -> float:
    return (_logits(model, features).argmax(dim=1) == labels).sum().item() / len(labels)


def _find_peak(indices, train, val, num_classes: int, options: dict) -> int:
    # Starts at index 0 with accuracy 0 and keeps the first strict maximum, as CLIP_benchmark does.
    best, best_acc = 0, 0.0
    for index in indices:
        model = train_linear(*train, num_classes, weight_decay=WEIGHT_DECAYS[index], **options)
        acc = _val_acc1(model, *val)
        if best_acc < acc:
            best, best_acc = index, acc
    return best


def choose_weight_decay(train, val, num_classes: int, progress: bool = False, **options) -> float:
    """CLIP_benchmark's weight-decay search on a validation split (19 trainings)."""
    bar = tqdm(total=4, desc="weight decay search", unit="round", disable=not progress)
    peak = _find_peak(FIRST_PROBES, train, val, num_classes, options)
    span = 8
    while span > 0:
        bar.update(1)
        left, right = max(peak - span, 0), min(peak + span, len(WEIGHT_DECAYS) - 1)
        peak = _find_peak([left, peak, right], train, val, num_classes, options)
        span //= 2
    bar.close()
    return WEIGHT_DECAYS[peak]


def linear_probe_metrics(train_features, train_labels, test_features, test_labels, val_features=None,
                         val_labels=None, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 64,
                         seed: int = 0, progress: bool = False) -> dict:
    """Train the probe (choosing the weight decay when a validation split is given) and score it on test.

    Returns ``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall`` (fractions) and ``weight_decay``.
    """
    torch.manual_seed(seed)
    # CLIP_benchmark draws this permutation (its few-shot sampler) even with all shots.
    order = torch.randperm(len(train_features))
    train = (train_features[order], train_labels[order].long())
    # CLIP_benchmark counts train classes only (and crashes when validation has one more); ours counts both.
    num_classes = int(max(train_labels.max(), val_labels.max() if val_labels is not None else -1)) + 1
    if int(test_labels.max()) >= num_classes:
        raise UserError(f"the linear-probe test set has class {int(test_labels.max())}, unseen in training")
    options = {"lr": lr, "epochs": epochs, "batch_size": batch_size, "seed": seed}
    weight_decay = 0.0
    if val_features is not None:
        val = (val_features, val_labels.long())
        weight_decay = choose_weight_decay(train, val, num_classes, progress=progress, **options)
        train = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    model = train_linear(*train, num_classes, weight_decay=weight_decay, **options)
    logits = _logits(model, test_features)
    metrics = classification_metrics(logits, test_labels.long())
    if int(test_labels.max()) < 5:  # CLIP_benchmark's condition for reporting top-5
        metrics["acc5"] = math.nan
    return {"lp_acc1": metrics["acc1"], "lp_acc5": metrics["acc5"],
            "lp_mean_per_class_recall": metrics["mean_per_class_recall"], "weight_decay": weight_decay}


def validation_split(num_samples: int, proportion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows): ``torch.utils.data.random_split`` as CLIP_benchmark's
    ``--val_proportion`` uses it, seeded here so the split is reproducible."""
    train, val = torch.utils.data.random_split(range(num_samples), [1 - proportion, proportion],
                                               generator=torch.Generator().manual_seed(seed))
    return torch.tensor(list(train.indices), dtype=torch.long), torch.tensor(list(val.indices), dtype=torch.long)


def cached_features(encoder, dataset, cache_file: Path | None, batch_size: int = 256, workers: int = 0,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features and labels, read from ``cache_file`` (safetensors) when present, else computed and stored."""
    from safetensors.torch import load_file, save_file

    if cache_file is not None and cache_file.is_file():
        stored = load_file(str(cache_file))
        return stored["features"], stored["labels"]
    features, labels = encode_labeled_images(encoder, dataset, batch_size=batch_size, workers=workers,
                                             progress=progress)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous(), "labels": labels}, str(cache_file))
    return features, labels


def evaluate_linear_probe(encoder, train_dataset, test_dataset, *, val_proportion: float = 0.2,
                          feature_cache: str | Path | None = None, batch_size: int = 256, workers: int = 0,
                          progress: bool = False, lr: float = 0.1, epochs: int = 10, probe_batch_size: int = 64,
                          seed: int = 0) -> dict:
    """Linear-probe metrics of ``encoder`` on labeled image sets (``dataset[i] -> (PIL image, label)``).

    ``batch_size``/``workers``: image encoding; ``probe_batch_size``, ``lr``, ``epochs``, ``seed``: the
    probe's training. ``feature_cache``: a directory; ``train.safetensors`` / ``test.safetensors``
    there are reused when present (the caller names it after the model and data).
    """
    if not 0 <= val_proportion < 1:
        raise ValueError(f"val_proportion must be in [0, 1), got {val_proportion}")
    cache = Path(feature_cache) if feature_cache else None
    encode = {"batch_size": batch_size, "workers": workers, "progress": progress}
    train_x, train_y = cached_features(encoder, train_dataset, cache and cache / "train.safetensors", **encode)
    test_x, test_y = cached_features(encoder, test_dataset, cache and cache / "test.safetensors", **encode)
    probe = {"lr": lr, "epochs": epochs, "batch_size": probe_batch_size, "seed": seed, "progress": progress}
    if val_proportion == 0:
        return linear_probe_metrics(train_x, train_y, test_x, test_y, **probe)
    train_rows, val_rows = validation_split(len(train_x), val_proportion, seed)
    return linear_probe_metrics(train_x[train_rows], train_y[train_rows], test_x, test_y, train_x[val_rows],
                                train_y[val_rows], **probe)
