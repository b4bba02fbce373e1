"""Turn evaluation images and texts into L2-normalized embeddings with any encoder.

The encoder protocol: ``encode_image(images) -> (B, D)``, ``encode_text(tokens) -> (B, D)``,
``tokenizer(list[str]) -> LongTensor``, ``image_spec`` (an ``ImageSpec``). It may be an
``nn.Module`` itself or hold one as ``encoder.model``; either may be mid-training.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipdistill.data.transforms import eval_transform
from clipdistill.models.spec import ImageSpec


def _modules_of(encoder) -> list[nn.Module]:
    roots = [candidate for candidate in (encoder, getattr(encoder, "model", None)) if isinstance(candidate, nn.Module)]
    return [module for root in roots for module in root.modules()]


@contextmanager
def evaluating(encoder) -> Iterator[None]:
    """Run the block with the encoder in eval mode and without autograd, then restore its modes.

    Every submodule's own flag is restored (not one ``train(previous)`` call), so a part that was
    deliberately kept in eval inside a training model, a frozen teacher say, stays that way.
    """
    modules = _modules_of(encoder)
    previous = [module.training for module in modules]
    for module in modules:
        module.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for module, was_training in zip(modules, previous):
            module.training = was_training


def encoder_device(encoder) -> torch.device:
    """Where the encoder's inputs must go: its ``device`` attribute, else its first parameter's device."""
    device = getattr(encoder, "device", None)
    if device is not None:
        return torch.device(device)
    for module in _modules_of(encoder):
        for parameter in module.parameters(recurse=False):
            return parameter.device
    return torch.device("cpu")


class _EvalImages(Dataset):
    """``dataset[i] -> (image, target)`` with the image turned into the model's eval tensor.

    Holds the ``ImageSpec``, not the transform closure, so it pickles into worker processes
    whatever their start method.
    """

    def __init__(self, dataset, spec: ImageSpec):
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return eval_transform(self.spec)(image), target


def _stack_images_keep_targets(batch):
    # default_collate would transpose lists of captions (and fail on unequal lengths).
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def encode_labeled_images(encoder, dataset, batch_size: int = 256, workers: int = 0,
                          progress: bool = False) -> tuple[torch.Tensor, list]:
    """Encode ``dataset[i] -> (PIL image, target)`` in order.

    Returns ``(features, targets)``: ``(N, D)`` float32 L2-normalized features on the CPU and the
    N targets (labels, caption lists, ...) untouched, one pass over the data for both.
    """
    device = encoder_device(encoder)
    loader = DataLoader(_EvalImages(dataset, encoder.image_spec), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_stack_images_keep_targets,
                        pin_memory=device.type == "cuda")
    features, targets = [], []
    with evaluating(encoder):
        for images, batch_targets in tqdm(loader, desc="encode images", unit="batch", disable=not progress):
            embedded = encoder.encode_image(images.to(device, non_blocking=True))
            # Normalizing again is a no-op for a conforming encoder and makes a raw student safe.
            features.append(F.normalize(embedded.float(), dim=-1).cpu())
            targets.extend(batch_targets)
    if not features:
        raise ValueError("no images to encode: the dataset is empty")
    return torch.cat(features), targets


class _WithoutTarget(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], None


def encode_images(encoder, images_dataset, batch_size: int = 256, workers: int = 0,
                  progress: bool = False) -> torch.Tensor:
    """``(N, D)`` float32 L2-normalized features of ``images_dataset[i] -> PIL image``, in order."""
    features, _ = encode_labeled_images(encoder, _WithoutTarget(images_dataset), batch_size=batch_size,
                                        workers=workers, progress=progress)
    return features


def encode_texts(encoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``(N, D)`` float32 L2-normalized features of ``texts``, in order."""
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    device = encoder_device(encoder)
    features = []
    with evaluating(encoder):
        for start in range(0, len(texts), batch_size):
            tokens = encoder.tokenizer(list(texts[start:start + batch_size])).to(device)
            features.append(F.normalize(encoder.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(features)
