"""Parity with the ``clip-benchmark`` package: same open_clip model, same data, metrics within 1e-4.

    pip install -e ".[parity]"          # or: pip install --no-deps clip-benchmark
    python bench/parity_clip_benchmark.py [--images-per-class 20]

Builds a small data set in a temporary directory (a random-init open_clip model of the tiny-teacher
preset, procedural images: 10 classes for zero-shot and linear probe, 60 images x 3 captions for
retrieval), runs CLIP_benchmark's own ``metrics`` functions (``zeroshot_classification.evaluate``,
``zeroshot_retrieval.evaluate``, ``linear_probe.evaluate``) and ours on it, prints both and exits 1
on any difference above the tolerance.

CLIP_benchmark's linear probe asserts a CUDA device. On a CPU-only machine the script runs it with
``.cuda()`` / ``.to("cuda")`` mapped to the CPU (``amp=False``). Its ``accuracy`` helper fails on
NumPy 2 (``float()`` of a 1-element array), so the script swaps in the same formula with ``.item()``.
It also hands CLIP_benchmark the
image features we computed through its feature-cache files, after checking that they equal the
features CLIP_benchmark's own ``Featurizer`` computes. Both probes then start from
``torch.manual_seed(seed)`` with the same train/validation split.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from clipdistill.data.synthetic import SyntheticClassification, SyntheticRetrieval
from clipdistill.data.transforms import eval_transform
from clipdistill.eval import evaluate_retrieval, evaluate_zero_shot
from clipdistill.eval.linear_probe import linear_probe_metrics, validation_split
from clipdistill.eval.encode import encode_labeled_images
from clipdistill.models import build_student

TOLERANCE = 1e-4


class _Torchvision(torch.utils.data.Dataset):
    """(tensor image, target) as CLIP_benchmark's datasets give them (``classes`` for zero-shot)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform
        self.classes = getattr(dataset, "classnames", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, target = self.dataset[index]
        return self.transform(image), target


def _captions_collate(batch):
    images, texts = zip(*batch)
    return torch.stack(images), list(texts)


@contextlib.contextmanager
def _cuda_on_cpu():
    """CLIP_benchmark's linear probe insists on CUDA; map its device moves to the CPU."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" else a for a in args)
        return original_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda, torch.Tensor.to = saved


def _accuracy_numpy2(output, target, topk=(1,)):
    """CLIP_benchmark 1.6.2's ``accuracy`` with ``.item()``: its ``float(ndarray of shape (1,))`` fails on NumPy 2."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def _patch_accuracy(cb) -> None:
    cb.zeroshot_classification.accuracy = _accuracy_numpy2
    cb.linear_probe.accuracy = _accuracy_numpy2


def _zero_shot(model, student, data, cb):
    ours = evaluate_zero_shot(student, data, batch_size=32)
    loader = DataLoader(_Torchvision(data, eval_transform(student.image_spec)), batch_size=32)
    templates = [t.replace("{}", "{c}") for t in data.templates]
    theirs = cb.zeroshot_classification.evaluate(model, loader, student.tokenizer, data.classnames, templates,
                                                 device="cpu", amp=False)
    return ours, theirs


def _retrieval(model, student, data, cb):
    ours = evaluate_retrieval(student, data, batch_size=32)
    ours.pop("retrieval_mean_recall")
    loader = DataLoader(_Torchvision(data, eval_transform(student.image_spec)), batch_size=32,
                        collate_fn=_captions_collate)
    theirs = cb.zeroshot_retrieval.evaluate(model, loader, student.tokenizer, device="cpu", amp=False,
                                            recall_k_list=[1, 5, 10])
    return ours, theirs


def _linear_probe(model, student, train_data, test_data, cb, root: Path, seed: int = 0):
    train_x, train_y = encode_labeled_images(student, train_data, batch_size=32)
    test_x, test_y = encode_labeled_images(student, test_data, batch_size=32)
    train_y, test_y = torch.tensor(train_y), torch.tensor(test_y)
    # Their featurizer on the same images must give our features.
    featurizer = cb.linear_probe.Featurizer(model, normalize=True).eval()
    with torch.no_grad():
        images = torch.stack([eval_transform(student.image_spec)(train_data[i][0]) for i in range(8)])
        assert torch.allclose(featurizer(images), train_x[:8], atol=1e-5), "feature mismatch"
    train_rows, val_rows = validation_split(len(train_x), 0.2, seed)
    ours = linear_probe_metrics(train_x[train_rows], train_y[train_rows], test_x, test_y, train_x[val_rows],
                                train_y[val_rows], seed=seed)
    cache = root / "features" / "parity"
    cache.mkdir(parents=True)
    for split, x, y in (("train", train_x[train_rows], train_y[train_rows]), ("val", train_x[val_rows], train_y[val_rows]),
                        ("test", test_x, test_y)):
        torch.save(x, cache / f"features_{split}.pt")
        torch.save(y, cache / f"targets_{split}.pt")
    torch.manual_seed(seed)
    with _cuda_on_cpu():
        theirs = cb.linear_probe.evaluate(model, None, None, -1, 64, 0, 0.1, 10, "parity", seed,
                                          str(root / "features"), "cuda", val_dataloader=[], amp=False)
    return ({k: ours[k] for k in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall")},
            {k: theirs[k] for k in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall")})


def _compare(task: str, ours: dict, theirs: dict) -> bool:
    ok = True
    for name in ours:
        a, b = ours[name], theirs[name]
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE
        ok &= same
        print(f"| {task} | {name} | {a:.6f} | {b:.6f} | {'ok' if same else 'DIFFERENT'} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-per-class", type=int, default=20)
    args = parser.parse_args()
    try:
        import clip_benchmark.metrics.linear_probe  # noqa: F401
        import clip_benchmark.metrics.zeroshot_classification  # noqa: F401
        import clip_benchmark.metrics.zeroshot_retrieval  # noqa: F401
        from clip_benchmark import metrics as cb
    except ImportError:
        print("clip-benchmark is not installed: pip install -e '.[parity]'", file=sys.stderr)
        return 2
    _patch_accuracy(cb)
    torch.manual_seed(0)
    student = build_student("tiny-teacher")
    model = student.model.eval()
    classes = _first_classes(SyntheticClassification(24 * args.images_per_class, seed=1), 10)
    test = _first_classes(SyntheticClassification(24 * args.images_per_class, seed=2), 10)
    retrieval = _Subset(SyntheticRetrieval(60, seed=3))
    print("| task | metric | clipdistill | clip_benchmark | |\n|---|---|---|---|---|")
    ok = _compare("zeroshot_classification", *_zero_shot(model, student, test, cb))
    ok &= _compare("zeroshot_retrieval", *_retrieval(model, student, retrieval, cb))
    with tempfile.TemporaryDirectory() as root:
        ok &= _compare("linear_probe", *_linear_probe(model, student, classes, test, cb, Path(root)))
    print("parity: OK" if ok else "parity: FAILED")
    return 0 if ok else 1


class _Subset(torch.utils.data.Dataset):
    """Rows of a dataset, keeping its ``classnames``/``templates`` (first 3 captions for retrieval)."""

    def __init__(self, dataset, rows=None, classnames=None):
        self.dataset, self.rows = dataset, list(rows if rows is not None else range(len(dataset)))
        self.classnames = classnames
        self.templates = getattr(dataset, "templates", None)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        image, target = self.dataset[self.rows[index]]
        if isinstance(target, list):
            # Synthetic captions repeat across images; identical texts give exactly tied scores, whose
            # order torch.topk leaves unspecified (it differs between a matrix and its transpose).
            # Numbering the captions makes every score distinct, so the comparison tests the formulas.
            return image, [f"{caption} number {index}" for caption in target[:3]]
        return image, target


def _first_classes(dataset, num_classes: int):
    """The images of the first classes (synthetic labels are ``index % 24``)."""
    rows = [i for i in range(len(dataset)) if i % len(dataset.classnames) < num_classes]
    return _Subset(dataset, rows, classnames=list(dataset.classnames[:num_classes]))


if __name__ == "__main__":
    sys.exit(main())
