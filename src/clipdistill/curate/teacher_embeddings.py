"""Embed the first rows of a pair dataset with a teacher: the input of curation and pseudo-labels.

A small-scale stand-in for the teacher cache (``clipdistill cache``), used by the demo and the
ablation: the teacher's eval preprocessing (no augmentation), image and caption of each row.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipdistill.data.transforms import eval_transform


class _Rows(Dataset):
    def __init__(self, dataset, rows: int, spec):
        self.dataset, self.rows, self.spec = dataset, rows, spec

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return eval_transform(self.spec)(sample["image"]), sample["caption"]


def _stack(batch):
    return torch.stack([pixels for pixels, _ in batch]), [caption for _, caption in batch]


def embed_pairs(teacher, dataset, rows: int, *, batch_size: int = 256, workers: int = 0,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(image, text)``: ``(rows, D_t)`` float32 unit-norm teacher embeddings of ``dataset[0..rows)``."""
    loader = DataLoader(_Rows(dataset, rows, teacher.image_spec), batch_size=batch_size, num_workers=workers,
                        collate_fn=_stack)
    images, texts = [], []
    for pixels, captions in tqdm(loader, desc="teacher embeddings", unit="batch", disable=not progress):
        out = teacher(pixels, teacher.tokenizer(captions))
        images.append(out.image.float().numpy())
        texts.append(out.text.float().numpy())
    return np.concatenate(images), np.concatenate(texts)
