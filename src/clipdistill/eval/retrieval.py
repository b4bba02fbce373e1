"""Image-text retrieval recall, as CLIP_benchmark defines it (all captions of every image).

Scores are dot products of the given features (cosine similarity for L2-normalized ones).

- ``image_retrieval_recall@K``: a caption queries all images; a hit when its own image is in the
  top K. Averaged over captions.
- ``text_retrieval_recall@K``: an image queries all captions; a hit when *any* of its captions is in
  the top K. Averaged over images. (The CLIP-KD reference code kept only the first caption per
  image, which inflates this number; we do not.)

Metrics are fractions in [0, 1]. Ties are broken by ``torch.topk``'s order, deterministically.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from clipdistill.errors import UserError
from clipdistill.eval.encode import encode_labeled_images, encode_texts

DEFAULT_KS = (1, 5, 10)
# Above every K, so a query without a positive among all candidates misses even when K > N_candidates.
NOT_FOUND = torch.iinfo(torch.long).max


def _first_positive_rank(queries: torch.Tensor, candidates: torch.Tensor, is_positive: Callable,
                         depth: int, chunk_size: int) -> torch.Tensor:
    """``(N_query,)`` rank (0-based) of each query's best-ranked positive; ``NOT_FOUND`` if none in the top ``depth``.

    ``is_positive(query_rows, top_indices) -> bool (chunk, depth)``. The similarity matrix is built
    a chunk of queries at a time, so memory stays ``chunk_size x N_candidates``.
    """
    ranks = []
    for start in range(0, len(queries), chunk_size):
        rows = torch.arange(start, min(start + chunk_size, len(queries)), device=queries.device)
        top = (queries[rows] @ candidates.T).topk(depth, dim=1).indices
        positive = is_positive(rows, top)
        # argmax returns the first maximal index, i.e. the best-ranked positive.
        first = positive.to(torch.uint8).argmax(dim=1)
        ranks.append(torch.where(positive.any(dim=1), first, torch.full_like(first, NOT_FOUND)))
    return torch.cat(ranks)


def _check_inputs(image_features, text_features, text_to_image, ks) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"features must be (N, D) with one D; got image {tuple(image_features.shape)}, "
                         f"text {tuple(text_features.shape)}")
    if text_to_image.shape != (len(text_features),):
        raise ValueError(f"text_to_image must have one entry per text ({len(text_features)}), "
                         f"got shape {tuple(text_to_image.shape)}")
    if len(text_to_image) and not (0 <= int(text_to_image.min()) and int(text_to_image.max()) < len(image_features)):
        raise ValueError(f"text_to_image holds indices outside [0, {len(image_features)})")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024) -> dict[str, float]:
    """Recall@K in both directions.

    Args:
        image_features: ``(N_img, D)``, normalized.
        text_features: ``(N_txt, D)``, normalized; every caption of every image.
        text_to_image: ``(N_txt,)`` long, the image each caption describes.
        ks: the K values. A K above the number of candidates counts every candidate.
        chunk_size: queries scored at a time.

    Returns:
        ``{"image_retrieval_recall@K": ..., "text_retrieval_recall@K": ...}`` for every K.
    """
    _check_inputs(image_features, text_features, text_to_image, ks)
    images, texts = image_features.float(), text_features.float()
    owner = text_to_image.to(device=images.device, dtype=torch.long)

    def caption_finds_its_image(rows, top):
        return top == owner[rows].unsqueeze(1)

    def image_finds_a_caption(rows, top):
        return owner[top] == rows.unsqueeze(1)

    # One top-max(K) per query serves every K: recall@K is "first positive ranked below K".
    image_rank = _first_positive_rank(texts, images, caption_finds_its_image,
                                      depth=min(max(ks), len(images)), chunk_size=chunk_size)
    text_rank = _first_positive_rank(images, texts, image_finds_a_caption,
                                     depth=min(max(ks), len(texts)), chunk_size=chunk_size)
    metrics = {}
    for k in ks:
        # Counting hits and dividing in Python keeps the fraction exact (no float32 mean).
        metrics[f"image_retrieval_recall@{k}"] = (image_rank < k).sum().item() / len(image_rank)
        metrics[f"text_retrieval_recall@{k}"] = (text_rank < k).sum().item() / len(text_rank)
    return metrics


def _flatten_captions(captions_per_image: list) -> tuple[list[str], torch.Tensor]:
    texts, owner = [], []
    for image_index, captions in enumerate(captions_per_image):
        # A bare string is one caption, not a list of one-character captions.
        captions = [captions] if isinstance(captions, str) else list(captions)
        texts.extend(captions)
        owner.extend([image_index] * len(captions))
    return texts, torch.tensor(owner, dtype=torch.long)


def evaluate_retrieval(encoder, dataset, batch_size: int = 256, workers: int = 0,
                       progress: bool = False) -> dict[str, float]:
    """Recall@{1,5,10} both ways on ``dataset[i] -> (PIL image, list of captions)``.

    Also returns ``retrieval_mean_recall``, the mean of the six recalls.
    """
    if len(dataset) == 0:
        raise UserError("the retrieval dataset is empty")
    image_features, captions = encode_labeled_images(encoder, dataset, batch_size=batch_size,
                                                     workers=workers, progress=progress)
    texts, text_to_image = _flatten_captions(captions)
    if not texts:
        raise UserError("the retrieval dataset has no captions")
    text_features = encode_texts(encoder, texts, batch_size=batch_size)
    metrics = retrieval_metrics(image_features, text_features, text_to_image, ks=DEFAULT_KS)
    metrics["retrieval_mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics
