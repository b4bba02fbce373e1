"""Guards: quick-GELU weights in a GELU architecture are refused; captions past the context are counted."""
import open_clip
import pytest

from clipdistill.errors import UserError
from clipdistill.models import build_student, load_teacher
from clipdistill.models.guards import activation_of, check_activation, count_truncated, token_lengths


@pytest.mark.parametrize("arch, tag, twin", [("ViT-H-14", "dfn5b", "ViT-H-14-quickgelu"),
                                              ("ViT-L-14", "dfn2b", "ViT-L-14-quickgelu"),
                                              ("ViT-B-32", "openai", "ViT-B-32-quickgelu"),
                                              ("ViT-H-14-worldwide", "metaclip2_worldwide",
                                               "ViT-H-14-worldwide-quickgelu")])
def test_quick_gelu_weights_in_a_gelu_architecture_are_refused_naming_the_twin(tmp_path, arch, tag, twin):
    # Refused from open_clip's table before anything is built, read or downloaded (the file need not exist).
    with pytest.raises(UserError, match=f"{arch}/{tag} was trained with QuickGELU but {arch} uses GELU.*use {twin}"):
        load_teacher("checkpoint", model=arch, path=__file__, pretrained=tag)
    with pytest.raises(UserError, match=f"use {twin}"):
        build_student(arch, pretrained=str(tmp_path / "w.pt"), tag=tag)
    with pytest.raises(UserError, match=f"use {twin}"):  # the tag downloaded directly: refused before the download
        build_student(arch, pretrained=tag)
    assert open_clip.get_pretrained_cfg(twin, tag)["quick_gelu"] is True  # the fix the message names exists


def test_gelu_weights_in_a_quick_gelu_architecture_are_refused():
    # open_clip's table files no GELU tag under a -quickgelu name: an inline config meets one.
    gelu_tag_cfg = dict(open_clip.get_model_config("ViT-B-32"), quick_gelu=True)
    with pytest.raises(UserError, match="ViT-B-32/laion2b_s34b_b79k was trained with GELU but ViT-B-32 uses QuickGELU"):
        check_activation("ViT-B-32", gelu_tag_cfg, "laion2b_s34b_b79k")
    check_activation("ViT-B-32", open_clip.get_model_config("ViT-B-32"), "laion2b_s34b_b79k")  # agrees: no error
    check_activation("ViT-H-14-quickgelu", open_clip.get_model_config("ViT-H-14-quickgelu"), "dfn5b")


def test_matching_activation_passes_and_is_reported():
    assert activation_of(open_clip.get_model_config("ViT-H-14-quickgelu")) == "quick_gelu"
    assert activation_of(open_clip.get_model_config("ViT-H-14")) == "gelu"


def test_truncated_captions_are_counted_for_open_clips_bpe():
    tokenizer = open_clip.SimpleTokenizer(context_length=8)
    # "a" is one BPE token: k words + start + end = k + 2 tokens; 6 words fit in 8, 7 do not.
    captions = [" ".join(["a"] * k) for k in (1, 6, 7, 12)]
    assert token_lengths(tokenizer, captions) == [3, 8, 9, 14]
    assert count_truncated(tokenizer, captions) == 2
    # The oracle: a caption is cut exactly when open_clip's own output ends in a forced end token.
    tokens = tokenizer(captions)
    cut = [(row != 0).all().item() and len(tokenizer.encode(text)) + 2 > 8 for row, text in zip(tokens, captions)]
    assert sum(cut) == 2


def test_truncated_captions_are_counted_for_a_hugging_face_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from real_teachers import CONTEXT, make_siglip_style_folder

    folder = make_siglip_style_folder(tmp_path / "m")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    words = CONTEXT - 1  # + the end token = the context exactly
    captions = [" ".join(["red"] * words), " ".join(["red"] * (words + 1)), "a circle"]
    assert token_lengths(tokenizer, captions) == [CONTEXT, CONTEXT + 1, 3]
    assert count_truncated(tokenizer, captions) == 1


def test_an_unknown_tokenizer_is_not_guessed():
    assert count_truncated(lambda texts: None, ["a"]) is None
