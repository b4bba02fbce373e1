import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipdistill.data.transforms import eval_transform
from clipdistill.eval import encode_images, encode_labeled_images, encode_texts, evaluating
from clipdistill.eval.encode import encoder_device
from clipdistill.models.spec import ImageSpec

SPEC = ImageSpec(size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


class Tower(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.image = nn.Linear(3 * 8 * 8, dim)
        self.text = nn.EmbeddingBag(128, dim)
        self.dropout = nn.Dropout(0.5)  # in train mode this would make encodings random


class LinearEncoder:
    """Holds its model as ``.model`` (not an nn.Module itself); returns raw, unnormalized features."""

    image_spec = SPEC

    def __init__(self, dim: int = 6):
        self.model = Tower(dim)
        self.modes_seen = []

    def tokenizer(self, texts):
        return torch.tensor([[ord(ch) % 128 for ch in text.ljust(12)[:12]] for text in texts])

    def encode_image(self, images):
        self.modes_seen.append((self.model.training, torch.is_grad_enabled()))
        return self.model.image(self.model.dropout(images.flatten(1)))

    def encode_text(self, tokens):
        self.modes_seen.append((self.model.training, torch.is_grad_enabled()))
        return self.model.text(tokens)


def photos(count: int):
    generator = torch.Generator().manual_seed(5)
    return [Image.fromarray(torch.randint(0, 256, (10 + i, 12, 3), generator=generator, dtype=torch.uint8).numpy())
            for i in range(count)]


def test_encode_images_equals_transform_then_encode_normalized_in_order():
    encoder, images = LinearEncoder(), photos(7)
    encoder.model.eval()
    with torch.no_grad():
        manual = torch.stack([eval_transform(SPEC)(image) for image in images])
        expected = F.normalize(encoder.model.image(manual.flatten(1)), dim=-1)
    for batch_size in (3, 256):
        features = encode_images(encoder, images, batch_size=batch_size)
        assert features.dtype == torch.float32 and features.shape == (7, 6)
        torch.testing.assert_close(features, expected)


def test_worker_processes_give_the_same_features():
    encoder, images = LinearEncoder(), photos(6)
    torch.testing.assert_close(encode_images(encoder, images, batch_size=2, workers=2),
                               encode_images(encoder, images, batch_size=2, workers=0))


def test_labeled_images_keep_targets_untouched():
    images = photos(3)
    captions = [["a", "b", "c"], ["d"], []]  # unequal lengths: default_collate would fail
    features, targets = encode_labeled_images(LinearEncoder(), list(zip(images, captions)), batch_size=2)
    assert targets == captions and features.shape == (3, 6)


def test_encode_texts_is_batch_independent_and_normalized():
    encoder = LinearEncoder()
    texts = [f"caption number {i}" for i in range(5)]
    with torch.no_grad():
        expected = F.normalize(encoder.model.text(encoder.tokenizer(texts)), dim=-1)
    for batch_size in (2, 256):
        torch.testing.assert_close(encode_texts(encoder, texts, batch_size=batch_size), expected)
    with pytest.raises(ValueError, match="no texts"):
        encode_texts(encoder, [])


def test_runs_in_eval_without_grad_and_restores_every_submodule_mode():
    encoder = LinearEncoder()
    encoder.model.train()
    encoder.model.dropout.eval()  # a part kept in eval on purpose must stay so
    encode_images(encoder, photos(2))
    encode_texts(encoder, ["x"])
    assert encoder.modes_seen == [(False, False), (False, False)]
    assert encoder.model.training and encoder.model.image.training and encoder.model.text.training
    assert not encoder.model.dropout.training
    assert torch.is_grad_enabled()


def test_modes_restored_when_encoding_fails():
    module = nn.Sequential(nn.Linear(2, 2)).train()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluating(module):
            assert not module.training and not module[0].training
            raise RuntimeError("boom")
    assert module.training and module[0].training


def test_progress_bar_only_when_asked(capsys):
    encode_images(LinearEncoder(), photos(2), progress=False)
    assert "encode images" not in capsys.readouterr().err
    encode_images(LinearEncoder(), photos(2), progress=True)
    assert "encode images" in capsys.readouterr().err


def test_encoder_device_from_attribute_or_parameters():
    assert encoder_device(LinearEncoder()) == torch.device("cpu")
    assert encoder_device(type("WithDevice", (), {"device": "meta"})()) == torch.device("meta")
    assert encoder_device(object()) == torch.device("cpu")
