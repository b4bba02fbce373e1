import pytest
import torch
import torch.nn.functional as F

from clipdistill.errors import UserError
from clipdistill.eval import evaluate_retrieval, retrieval_metrics

# 6 captions x 3 images, captions (0, 1) -> image 0, (2, 3) -> image 1, (4, 5) -> image 2.
HAND_SCORES = torch.tensor([
    [0.90, 0.10, 0.00],
    [0.20, 0.80, 0.50],
    [0.30, 0.60, 0.10],
    [0.70, 0.40, 0.35],
    [0.10, 0.20, 0.25],
    [0.50, 0.00, 0.15],
])
HAND_OWNER = torch.tensor([0, 0, 1, 1, 2, 2])


def naive_recalls(image_features, text_features, text_to_image, ks):
    """One query at a time, straight from the definition."""
    scores = (text_features @ image_features.T).tolist()  # caption x image
    owner = text_to_image.tolist()
    out = {}
    for k in ks:
        caption_hits = []
        for t, row in enumerate(scores):
            ranked = sorted(range(len(row)), key=lambda i: -row[i])
            caption_hits.append(owner[t] in ranked[:k])
        image_hits = []
        for i in range(len(image_features)):
            column = [row[i] for row in scores]
            ranked = sorted(range(len(column)), key=lambda t: -column[t])
            image_hits.append(any(owner[t] == i for t in ranked[:k]))
        out[f"image_retrieval_recall@{k}"] = sum(caption_hits) / len(caption_hits)
        out[f"text_retrieval_recall@{k}"] = sum(image_hits) / len(image_hits)
    return out


def test_hand_computed_case():
    # Identity image features make the caption features the score rows themselves.
    metrics = retrieval_metrics(torch.eye(3), HAND_SCORES, HAND_OWNER, ks=(1, 2, 3))
    # Caption ranks of their own image: 0, 2, 0, 1, 0, 1.
    assert metrics["image_retrieval_recall@1"] == pytest.approx(3 / 6)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(5 / 6)
    assert metrics["image_retrieval_recall@3"] == pytest.approx(1.0)
    # Best rank of any own caption per image: image 0 -> 0 (t0), image 1 -> 1 (t2 after t1),
    # image 2 -> 2 (t4 after t1 and t3).
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@3"] == pytest.approx(1.0)


def test_k_beyond_candidates_counts_all_and_captionless_image_is_a_miss():
    images = torch.eye(2)
    texts = torch.tensor([[0.0, 1.0], [0.2, 0.1]])  # both captions belong to image 0; image 1 has none
    metrics = retrieval_metrics(images, texts, torch.tensor([0, 0]), ks=(1, 10))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert metrics["image_retrieval_recall@10"] == pytest.approx(1.0)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(0.5)
    assert metrics["text_retrieval_recall@10"] == pytest.approx(0.5)


def test_matches_naive_reference_exactly_with_chunking_and_uneven_captions():
    generator = torch.Generator().manual_seed(1)
    captions_per_image = torch.randint(0, 5, (40,), generator=generator)  # includes images without captions
    owner = torch.repeat_interleave(torch.arange(40), captions_per_image)
    images = F.normalize(torch.randn(40, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(len(owner), 16, generator=generator), dim=-1)
    ks = (1, 3, 5, 10, 50)
    expected = naive_recalls(images, texts, owner, ks)
    for chunk_size in (7, 1024):
        assert retrieval_metrics(images, texts, owner, ks=ks, chunk_size=chunk_size) == expected


def test_oracle_features_recall_everything():
    owner = torch.arange(50).repeat_interleave(5)
    images = torch.eye(50)
    metrics = retrieval_metrics(images, images[owner], owner)
    assert set(metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert all(value == 1.0 for value in metrics.values())


def test_random_and_shuffled_features_are_near_chance():
    generator = torch.Generator().manual_seed(0)
    n = 1000
    owner = torch.arange(n)
    random_images = F.normalize(torch.randn(n, 64, generator=generator), dim=-1)
    random_texts = F.normalize(torch.randn(n, 64, generator=generator), dim=-1)
    # Oracle features, but each caption attributed to a random image: as good as chance.
    shuffled = torch.randperm(n, generator=generator)
    for metrics in (retrieval_metrics(random_images, random_texts, owner),
                    retrieval_metrics(torch.eye(n), torch.eye(n), shuffled)):
        for direction in ("image", "text"):
            assert metrics[f"{direction}_retrieval_recall@1"] <= 0.006  # chance 0.001
            assert 0.002 <= metrics[f"{direction}_retrieval_recall@10"] <= 0.025  # chance 0.010


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="one D"):
        retrieval_metrics(torch.eye(3), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval_metrics(torch.eye(3), torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))


def test_evaluate_retrieval_with_oracle_encoder_is_perfect(oracle_encoder, retrieval_set):
    metrics = evaluate_retrieval(oracle_encoder, retrieval_set(20, 3), batch_size=8)
    assert set(metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} | {
        "retrieval_mean_recall"}
    assert all(value == 1.0 for value in metrics.values())


def test_evaluate_retrieval_with_mismatched_captions_misses_and_averages_six(oracle_encoder, retrieval_set):
    # Captions of image i describe image i+1: the oracle never ranks the true pair first.
    metrics = evaluate_retrieval(oracle_encoder, retrieval_set(20, 3, caption_of=lambda i: (i + 1) % 20))
    assert metrics["image_retrieval_recall@1"] == 0.0
    assert metrics["text_retrieval_recall@1"] == 0.0
    six = [value for key, value in metrics.items() if key != "retrieval_mean_recall"]
    assert len(six) == 6
    assert metrics["retrieval_mean_recall"] == pytest.approx(sum(six) / 6)


def test_single_string_caption_is_one_caption(oracle_encoder, retrieval_set):
    dataset = [(image, captions[0]) for image, captions in retrieval_set(12, 1)]
    metrics = evaluate_retrieval(oracle_encoder, dataset)
    # Split into characters, "image 3 caption 0" would give captions without a number and fail.
    assert metrics["retrieval_mean_recall"] == 1.0


def test_evaluate_retrieval_empty_dataset_is_a_user_error(oracle_encoder):
    with pytest.raises(UserError, match="empty"):
        evaluate_retrieval(oracle_encoder, [])
