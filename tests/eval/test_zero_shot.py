import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from clipdistill.errors import UserError
from clipdistill.eval import classification_metrics, evaluate_zero_shot, zero_shot_classifier


def naive_metrics(logits, labels):
    rows, truth = logits.tolist(), labels.tolist()
    ranked = [sorted(range(len(row)), key=lambda c: -row[c]) for row in rows]
    acc1 = sum(r[0] == y for r, y in zip(ranked, truth)) / len(truth)
    acc5 = sum(y in r[:5] for r, y in zip(ranked, truth)) / len(truth)
    recalls = []
    for c in sorted(set(truth)):
        members = [i for i, y in enumerate(truth) if y == c]
        recalls.append(sum(ranked[i][0] == c for i in members) / len(members))
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": sum(recalls) / len(recalls)}


def test_hand_computed_metrics():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0, predicted 0
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5, ranked last: misses top 5
        [0.0, 0.1, 0.9, 0.2, 0.3, 0.4],  # label 1, ranked 5th: a top-5 hit only
        [0.1, 0.0, 0.0, 0.0, 0.0, 0.9],  # label 5, predicted 5
    ])
    metrics = classification_metrics(logits, torch.tensor([0, 5, 1, 5]))
    assert metrics["acc1"] == pytest.approx(2 / 4)
    assert metrics["acc5"] == pytest.approx(3 / 4)
    # Per-class recall over classes that occur: class 0 -> 1, class 1 -> 0, class 5 -> 1/2.
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)


def test_matches_naive_reference_and_sklearn_balanced_accuracy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (300,), generator=generator)  # class 9 of 10 never occurs
    logits = torch.randn(300, 10, generator=generator) + 1.5 * F.one_hot(labels, 10)
    metrics = classification_metrics(logits, labels)
    expected = naive_metrics(logits, labels)
    assert metrics["acc1"] == expected["acc1"] and metrics["acc5"] == expected["acc5"]
    assert metrics["mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"], abs=1e-12)
    assert 0.3 < metrics["acc1"] < 0.95  # a non-trivial case, not all right or all wrong
    with pytest.warns(UserWarning):  # sklearn warns that class 9 is predicted but never true
        balanced = sklearn_metrics.balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert metrics["mean_per_class_recall"] == pytest.approx(balanced, abs=1e-12)


def test_fewer_than_five_classes_uses_top_c():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    metrics = classification_metrics(logits, torch.tensor([2, 0]))
    assert metrics == {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}


def test_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))


class LinearTextEncoder:
    """Texts embed as the sum of random character vectors: distinct, unnormalized, deterministic."""

    def __init__(self, dim: int = 8):
        self.table = torch.randn(128, dim, generator=torch.Generator().manual_seed(3))

    def tokenizer(self, texts):
        return torch.tensor([[ord(ch) for ch in text.ljust(24)[:24]] for text in texts])

    def encode_text(self, tokens, normalize=False):
        features = self.table[tokens].sum(dim=1)
        return F.normalize(features, dim=-1) if normalize else features


CLASSNAMES = ["cat", "dog", "car"]


@pytest.mark.parametrize("templates", [["a photo of a {}.", "art of the {}"],
                                       [lambda c: f"a photo of a {c}.", lambda c: f"art of the {c}"]])
def test_classifier_matches_open_clip(templates):
    encoder = LinearTextEncoder()
    expected = build_zero_shot_classifier(encoder, encoder.tokenizer, CLASSNAMES, templates, num_classes_per_batch=2)
    for batch_size in (1, 256):
        weights = zero_shot_classifier(encoder, CLASSNAMES, templates, batch_size=batch_size)
        assert weights.shape == (8, 3)
        torch.testing.assert_close(weights, expected)
        torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))


def test_classifier_accepts_benchmark_style_and_per_class_prompts():
    encoder = LinearTextEncoder()
    reference = zero_shot_classifier(encoder, CLASSNAMES, ["a photo of a {}.", "art of the {}"])
    benchmark_style = zero_shot_classifier(encoder, CLASSNAMES, ["a photo of a {c}.", "art of the {c}"])
    torch.testing.assert_close(benchmark_style, reference)
    per_class = {"cat": ["a photo of a cat."], "dog": ["art of the dog", "a photo of a dog."], "car": ["x car"]}
    weights = zero_shot_classifier(encoder, CLASSNAMES, per_class)
    dog = F.normalize(encoder.encode_text(encoder.tokenizer(per_class["dog"])), dim=-1).mean(0)
    torch.testing.assert_close(weights[:, 1], F.normalize(dog, dim=0))


def test_oracle_encoder_classifies_perfectly_and_is_left_as_found(oracle_encoder, class_set):
    oracle_encoder.train()
    metrics = evaluate_zero_shot(oracle_encoder, class_set(num_classes=7, per_class=3), batch_size=4)
    assert metrics == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}
    assert oracle_encoder.training and oracle_encoder.unused.training
    assert oracle_encoder.calls_in_train_mode == 0 and oracle_encoder.calls_with_grad == 0


def test_mislabelled_dataset_scores_zero(oracle_encoder, class_set):
    metrics = evaluate_zero_shot(oracle_encoder, class_set(num_classes=7, per_class=2, label_of=lambda c: (c + 1) % 7))
    assert metrics["acc1"] == 0.0 and metrics["mean_per_class_recall"] == 0.0


def test_dataset_without_classnames_is_a_user_error(oracle_encoder, class_set):
    plain = list(class_set(num_classes=2, per_class=1))
    with pytest.raises(UserError, match="classnames"):
        evaluate_zero_shot(oracle_encoder, plain)
