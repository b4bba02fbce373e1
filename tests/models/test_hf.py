"""A local Hugging Face CLIPModel directory as teacher: same embeddings as transformers' own forward."""
import gzip
import json
import sys

import open_clip
import pytest
import torch

from clipdistill.errors import UserError
from clipdistill.models import load_teacher

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a large red circle left of a small blue square", "a green triangle", "two blue squares above"]
MEAN, STD = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
CONTEXT = 24


def _save_open_clip_bpe_as_hf_tokenizer(directory):
    """CLIP's BPE is open_clip's bundled vocabulary; write it in the vocab.json/merges.txt layout."""
    vocab = dict(open_clip.SimpleTokenizer().encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    (directory / "vocab.json").write_text(json.dumps(vocab))
    # open_clip's SimpleTokenizer reads exactly these merge lines from its gzip file.
    merges = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    transformers.CLIPTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_clip")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=CONTEXT, vocab_size=49408, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24, logit_scale_init_value=2.3)
    transformers.CLIPModel(config).eval().save_pretrained(str(directory))
    _save_open_clip_bpe_as_hf_tokenizer(directory)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_mean=list(MEAN), image_std=list(STD), resample=2
                                    ).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def teacher(hf_dir):
    return load_teacher("hf", path=str(hf_dir))


@pytest.fixture(scope="module")
def reference(hf_dir):
    return transformers.CLIPModel.from_pretrained(str(hf_dir)).float().eval()


def test_embeddings_equal_transformers_forward(teacher, reference):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # The oracle: transformers' own forward, dynamic padding plus an attention mask.
    inputs = transformers.AutoTokenizer.from_pretrained(teacher.identity["path"])(
        CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(pixel_values=images, **inputs)
    out = teacher(images, teacher.tokenizer(CAPTIONS))
    torch.testing.assert_close(out.image, expected.image_embeds, rtol=0, atol=1e-6)
    # Our tokens are padded to full length without a mask: CLIP's causal text tower ignores padding.
    torch.testing.assert_close(out.text, expected.text_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logit_scale, reference.logit_scale.exp().detach())
    assert out.normalized and teacher.embed_dim == 24


def test_tokenizer_matches_open_clip_up_to_padding(teacher):
    tokens = teacher.tokenizer(CAPTIONS)
    assert tokens.shape == (3, CONTEXT) and tokens.dtype == torch.long
    reference = open_clip.tokenize(CAPTIONS, context_length=CONTEXT)
    real = reference != 0  # open_clip pads with 0, Hugging Face with EOS
    torch.testing.assert_close(tokens[real], reference[real])
    long_caption = teacher.tokenizer([" ".join(["red"] * 100)])
    assert long_caption.shape == (1, CONTEXT) and long_caption[0, -1].item() == 49407  # truncated, EOS kept


def test_image_spec_and_identity_come_from_the_directory(teacher, hf_dir):
    spec = teacher.image_spec
    assert (spec.size, spec.mean, spec.std, spec.interpolation) == (32, MEAN, STD, "bilinear")
    from clipdistill.models.checkpoints import file_sha256
    assert teacher.identity == {"source": "hf", "model": "", "pretrained": "", "path": str(hf_dir.resolve()),
                                "weights_sha256": file_sha256(hf_dir / "model.safetensors")}


def test_hf_teacher_is_frozen(teacher):
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(module.training for module in teacher.modules())


def test_missing_pieces_are_user_errors(tmp_path, hf_dir, monkeypatch):
    with pytest.raises(UserError, match="directory not found"):
        load_teacher("hf", path=str(tmp_path / "absent"))
    with pytest.raises(UserError, match="no config.json"):
        load_teacher("hf", path=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(UserError, match="'blip' model; teacher.source=hf supports model types clip, metaclip_2, "
                                        "siglip, siglip2"):
        load_teacher("hf", path=str(tmp_path))
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                 "tokenizer_config.json"):
        (no_processor / name).write_bytes((hf_dir / name).read_bytes())
    with pytest.raises(UserError, match="no preprocessor_config.json"):
        load_teacher("hf", path=str(no_processor))
    (no_processor / "preprocessor_config.json").write_bytes((hf_dir / "preprocessor_config.json").read_bytes())
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (no_processor / name).unlink()
    with pytest.raises(UserError, match="no tokenizer in"):  # transformers would invent a 3-token one
        load_teacher("hf", path=str(no_processor))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install clipdistill\[hf\]"):
        load_teacher("hf", path=str(hf_dir))
