"""teacher.source=hf for SigLIP, SigLIP 2 (NaFlex) and MetaCLIP 2: embeddings equal transformers' own."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipdistill.data.transforms import eval_transform
from clipdistill.models import load_teacher

from real_teachers import save_wordlevel_tokenizer

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a red circle left of the blue square", "two small squares", "the green triangle above"]
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=24)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
MEAN, STD = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)


def _siglip(directory):
    config = transformers.SiglipConfig(text_config=dict(TEXT, max_position_embeddings=64),
                                       vision_config=dict(VISION, image_size=32))
    transformers.SiglipModel(config).eval().save_pretrained(str(directory))
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD),
                                      resample=2).save_pretrained(str(directory))


def _siglip2(directory):
    config = transformers.Siglip2Config(text_config=dict(TEXT, max_position_embeddings=64),
                                        vision_config=dict(VISION, num_patches=16))
    transformers.Siglip2Model(config).eval().save_pretrained(str(directory))
    transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=16, image_mean=list(MEAN), image_std=list(STD),
                                       resample=2).save_pretrained(str(directory))


def _metaclip_2(directory):
    config = transformers.MetaClip2Config(text_config=dict(TEXT, max_position_embeddings=20, eos_token_id=2),
                                          vision_config=dict(VISION, image_size=32), projection_dim=24)
    transformers.MetaClip2Model(config).eval().save_pretrained(str(directory))
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_mean=list(MEAN), image_std=list(STD), resample=3
                                    ).save_pretrained(str(directory))


FAMILIES = {"siglip": (_siglip, 64, "squash", True), "siglip2": (_siglip2, 64, "squash", True),
            "metaclip_2": (_metaclip_2, 20, "shortest", False)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    FAMILIES[name][0](directory)
    save_wordlevel_tokenizer(directory)
    reference = transformers.AutoModel.from_pretrained(str(directory)).float().eval()
    return name, directory, reference


def _square_photo(size=32):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_text_embeddings_equal_transformers_with_the_familys_padding(family):
    name, directory, reference = family
    _, context, _, _ = FAMILIES[name]
    teacher = load_teacher("hf", path=str(directory))
    tokens = teacher.tokenizer(CAPTIONS)
    assert tokens.shape == (3, context)  # always padded to the full context (SigLIP: max_length 64)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    expected_ids = tokenizer(CAPTIONS, padding="max_length", max_length=context, truncation=True,
                             return_tensors="pt")["input_ids"]
    assert torch.equal(tokens, expected_ids)
    with torch.no_grad():
        expected = F.normalize(_features(reference.get_text_features(input_ids=expected_ids)), dim=-1)
    torch.testing.assert_close(teacher.encode_text(tokens), expected, rtol=0, atol=1e-5)


def test_image_embeddings_equal_transformers_through_its_own_image_processor(family):
    name, directory, reference = family
    teacher = load_teacher("hf", path=str(directory))
    photo = _square_photo()
    processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
    inputs = dict(processor(images=[photo], return_tensors="pt"))
    with torch.no_grad():
        expected = F.normalize(_features(reference.get_image_features(**inputs)), dim=-1)
    ours = teacher.encode_image(eval_transform(teacher.image_spec)(photo)[None])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_scale_bias_and_preprocessing_come_from_the_model(family):
    name, directory, reference = family
    _, context, resize_mode, sigmoid = FAMILIES[name]
    teacher = load_teacher("hf", path=str(directory))
    assert teacher.image_spec.size == 32 and teacher.image_spec.mean == MEAN and teacher.image_spec.std == STD
    assert teacher.image_spec.resize_mode == resize_mode and teacher.tokenizer.context_length == context
    assert teacher.logit_scale().item() == pytest.approx(reference.logit_scale.exp().item())
    if sigmoid:
        assert teacher.logit_bias().item() == pytest.approx(reference.logit_bias.item())
        out = teacher(torch.zeros(1, 3, 32, 32), teacher.tokenizer(CAPTIONS[:1]))
        assert out.logit_bias is not None
    else:
        assert teacher.logit_bias() is None
