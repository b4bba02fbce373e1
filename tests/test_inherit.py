"""clipdistill inherit: a student cut out of its teacher (layers, heads, channels, dims, positions)."""
import copy
import json

import open_clip
import pytest
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed

from clipdistill.cli import main as cli_main
from clipdistill.errors import UserError
from clipdistill.inherit import Calibration, inherit_weights
from clipdistill.inherit.calibration import activation_scores
from clipdistill.inherit.command import inherit_to_dir
from clipdistill.inherit.layers import choose_layers
from clipdistill.inherit.towers import towers_of
from clipdistill.models.presets import preset_config, resolve_architecture
from clipdistill.models.student import build_student

TEACHER = "tiny-teacher"  # width 128, 4 heads of 32, MLP 512, 4 blocks per tower, embed 96, 32 px, context 32


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(1)
    model = build_student(TEACHER).model
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def teacher(teacher_file):
    return build_student(TEACHER, pretrained=teacher_file).model.eval()


def _variant(**changes) -> str:
    """A registered architecture: tiny-teacher with vision_cfg/text_cfg/top-level fields changed."""
    config = copy.deepcopy(preset_config(TEACHER))
    for key, value in changes.items():
        tower, _, field = key.partition("__")
        if field:
            config[f"{tower}_cfg"][field] = value
        else:
            config[key] = value
    return resolve_architecture(config)


def _inputs(size=32, context=32):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, size, size, generator=generator)
    tokens = open_clip.get_tokenizer(TEACHER)(["a red square", "two blue circles on grass", "x"])
    return images, tokens[:, :context]


def _tensors(model) -> dict:
    return {key: value for key, value in model.state_dict().items()}


# ---- same architecture: the teacher itself ---------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_dir(teacher_file, tmp_path_factory):
    """The teacher's own architecture inherited with the default layer choice (uniform: all blocks)."""
    out = tmp_path_factory.mktemp("inherited") / "student"
    inherit_to_dir(TEACHER, TEACHER, out, pretrained=teacher_file)
    return out


def test_student_with_the_teachers_architecture_gives_the_teachers_embeddings(teacher, teacher_dir):
    images, tokens = _inputs()
    with torch.no_grad():
        expected = teacher.encode_image(images), teacher.encode_text(tokens)
        for student in (open_clip.create_model(f"local-dir:{teacher_dir}").eval(),
                        build_student(TEACHER, pretrained=str(teacher_dir / "open_clip_model.safetensors")).model.eval()):
            assert torch.allclose(student.encode_image(images), expected[0], atol=1e-5, rtol=0)
            assert torch.allclose(student.encode_text(tokens), expected[1], atol=1e-5, rtol=0)
            assert student.logit_scale.item() == teacher.logit_scale.item()
    # open_clip finds the tokenizer and the teacher's preprocessing in the folder
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{teacher_dir}")(["a red square"]),
                       open_clip.get_tokenizer(TEACHER)(["a red square"]))
    config = json.loads((teacher_dir / "open_clip_config.json").read_text())
    assert config["model_cfg"] == open_clip.get_model_config(TEACHER)
    assert config["preprocess_cfg"]["mean"] == list(open_clip.get_model_preprocess_cfg(teacher)["mean"])


def test_layers_all_copies_every_tensor(teacher):
    student = build_student(TEACHER).model
    _, selection = inherit_weights(teacher, student, image_layers="all", text_layers="all")
    assert selection.image.layers == selection.text.layers == [0, 1, 2, 3]
    inherited = _tensors(student)
    for key, value in _tensors(teacher).items():
        assert torch.equal(inherited[key], value), key


def test_local_dir_teacher_spec(teacher, teacher_dir, tmp_path):
    inherit_to_dir(f"local-dir:{teacher_dir}", TEACHER, tmp_path / "again", layers="every_other",
                   text_layers="first_k", image_layers="all")
    again = open_clip.create_model(f"local-dir:{tmp_path / 'again'}").eval()
    for key, value in _tensors(teacher).items():
        assert torch.equal(again.state_dict()[key], value), key


def test_custom_text_student_inherits_from_a_clip_teacher(teacher):
    """CustomTextCLIP keeps its text tower under ``text.``; CLIP at the top level: the keys map across."""
    student = build_student(_variant(custom_text=True)).model.eval()
    assert isinstance(student, open_clip.CustomTextCLIP)
    inherit_weights(teacher, student)
    images, tokens = _inputs()
    with torch.no_grad():
        assert torch.allclose(student.encode_text(tokens), teacher.encode_text(tokens), atol=1e-5, rtol=0)
        assert torch.allclose(student.encode_image(images), teacher.encode_image(images), atol=1e-5, rtol=0)


def test_layer_scale_is_sliced_with_the_residual_channels():
    teacher = build_student(_variant(vision__ls_init_value=0.5, text__ls_init_value=0.5)).model
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.1, 1.0)  # distinct per channel, so a wrong slice shows
    student = build_student(_variant(vision__ls_init_value=0.5, text__ls_init_value=0.5, vision__width=64,
                                     text__width=64, text__heads=2, vision__layers=2, text__layers=2)).model
    _, selection = inherit_weights(teacher, student)
    source = _tensors(teacher)
    for prefix, chosen in (("visual.transformer.resblocks.", selection.image), ("transformer.resblocks.", selection.text)):
        for index, teacher_block in enumerate(chosen.layers):
            for gamma in ("ls_1.gamma", "ls_2.gamma"):
                assert torch.equal(student.state_dict()[f"{prefix}{index}.{gamma}"],
                                   source[f"{prefix}{teacher_block}.{gamma}"][chosen.width])


# ---- layers dropped, full width: each kept block is the teacher's block -------------------------------------

@pytest.mark.parametrize("image_layers,text_layers,expected_image,expected_text", [
    ("every_other", "every_other", [0, 2], [0, 2]),
    ("first_k", "1,3", [0, 1], [1, 3]),
    ("uniform", "0,2", [0, 3], [0, 2]),
])
def test_dropped_layers_keep_the_teachers_blocks(teacher, image_layers, text_layers, expected_image, expected_text):
    student = build_student(_variant(vision__layers=2, text__layers=2)).model
    _, selection = inherit_weights(teacher, student, image_layers=image_layers, text_layers=text_layers)
    assert selection.image.layers == expected_image and selection.text.layers == expected_text
    source, inherited = _tensors(teacher), _tensors(student)
    for prefix, kept in (("visual.transformer.resblocks.", expected_image), ("transformer.resblocks.", expected_text)):
        for index, teacher_block in enumerate(kept):
            keys = [key for key in inherited if key.startswith(f"{prefix}{index}.")]
            assert len(keys) == 12
            for key in keys:
                teacher_key = key.replace(f"{prefix}{index}.", f"{prefix}{teacher_block}.", 1)
                assert torch.equal(inherited[key], source[teacher_key]), key
    for key in ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "text_projection", "ln_final.weight", "visual.ln_post.bias"):
        assert torch.equal(inherited[key], source[key]), key


# ---- narrower: exactly the rows and columns a naive magnitude ranking picks ----------------------------------

def _sq(values) -> float:
    return sum(float(v) ** 2 for v in values)


def _naive_top(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def _naive_tower_choice(sd, prefix, projection_key, kept, width, heads, head_dim, keep_width, keep_heads, keep_mlp):
    """Magnitude ranking by loops over plain numbers (the definition in clipdistill.inherit.selection)."""
    def block(b, name):
        return sd[f"{prefix}transformer.resblocks.{b}.{name}"].tolist()

    width_scores = []
    for d in range(width):
        score = _sq(sd[projection_key][d].tolist())
        for b in kept:
            in_proj, out_proj = block(b, "attn.in_proj_weight"), block(b, "attn.out_proj.weight")
            c_fc, c_proj = block(b, "mlp.c_fc.weight"), block(b, "mlp.c_proj.weight")
            score += _sq(row[d] for row in in_proj) + _sq(out_proj[d]) + _sq(row[d] for row in c_fc) + _sq(c_proj[d])
        width_scores.append(score)
    chosen_heads, chosen_mlp = [], []
    for b in kept:
        in_proj, out_proj = block(b, "attn.in_proj_weight"), block(b, "attn.out_proj.weight")
        head_scores = []
        for h in range(heads):
            dims = range(h * head_dim, (h + 1) * head_dim)
            rows = [in_proj[part * width + i] for part in range(3) for i in dims]
            head_scores.append(sum(_sq(r) for r in rows) + sum(_sq(out_proj[o][i] for i in dims) for o in range(width)))
        chosen_heads.append(_naive_top(head_scores, keep_heads))
        c_fc, c_proj = block(b, "mlp.c_fc.weight"), block(b, "mlp.c_proj.weight")
        mlp_scores = [_sq(c_fc[j]) + _sq(row[j] for row in c_proj) for j in range(len(c_fc))]
        chosen_mlp.append(_naive_top(mlp_scores, keep_mlp))
    return _naive_top(width_scores, keep_width), chosen_heads, chosen_mlp


def _rows(t, index):
    return t[torch.tensor(index)]


def _cols(t, index):
    return t[:, torch.tensor(index)]


def test_narrow_student_keeps_exactly_the_naive_magnitude_selection(teacher, teacher_file, tmp_path):
    out = tmp_path / "tiny"
    record = inherit_to_dir(TEACHER, "tiny", out, pretrained=teacher_file)  # width 64, 2 heads, MLP 256, embed 64
    sd, student = _tensors(teacher), open_clip.create_model(f"local-dir:{out}").state_dict()
    embed = _naive_top([_sq(sd["visual.proj"][:, e].tolist()) + _sq(sd["text_projection"][:, e].tolist())
                        for e in range(96)], 64)
    assert record["selection"]["embed_dims"] == embed
    for tower, prefix, projection in (("image", "visual.", "visual.proj"), ("text", "", "text_projection")):
        kept = record["selection"][tower]["layers"]
        assert kept == [0, 3]
        width, heads, mlp = _naive_tower_choice(sd, prefix, projection, kept, 128, 4, 32, 64, 2, 256)
        assert record["selection"][tower]["width"] == width and record["selection"][tower]["heads"] == heads
        assert student[projection].equal(_cols(_rows(sd[projection], width), embed))
        for i, b in enumerate(kept):
            s_block, t_block = f"{prefix}transformer.resblocks.{i}.", f"{prefix}transformer.resblocks.{b}."
            head_cols = [h * 32 + j for h in heads[i] for j in range(32)]
            qkv_rows = [part * 128 + c for part in range(3) for c in head_cols]
            assert student[s_block + "attn.in_proj_weight"].equal(_cols(_rows(sd[t_block + "attn.in_proj_weight"], qkv_rows), width))
            assert student[s_block + "attn.in_proj_bias"].equal(_rows(sd[t_block + "attn.in_proj_bias"], qkv_rows))
            assert student[s_block + "attn.out_proj.weight"].equal(_cols(_rows(sd[t_block + "attn.out_proj.weight"], width), head_cols))
            assert student[s_block + "mlp.c_fc.weight"].equal(_cols(_rows(sd[t_block + "mlp.c_fc.weight"], mlp[i]), width))
            assert student[s_block + "mlp.c_proj.weight"].equal(_cols(_rows(sd[t_block + "mlp.c_proj.weight"], width), mlp[i]))
            assert student[s_block + "mlp.c_fc.bias"].equal(_rows(sd[t_block + "mlp.c_fc.bias"], mlp[i]))
            assert student[s_block + "ln_2.weight"].equal(_rows(sd[t_block + "ln_2.weight"], width))
    image_width, text_width = record["selection"]["image"]["width"], record["selection"]["text"]["width"]
    assert student["visual.conv1.weight"].equal(_rows(sd["visual.conv1.weight"], image_width))
    assert student["visual.class_embedding"].equal(_rows(sd["visual.class_embedding"], image_width))
    assert student["token_embedding.weight"].equal(_cols(sd["token_embedding.weight"], text_width))
    assert student["positional_embedding"].equal(_cols(sd["positional_embedding"], text_width))


# ---- position embeddings at another resolution / context -----------------------------------------------------

def test_position_embeddings_follow_open_clips_resize(teacher):
    sd = _tensors(teacher)
    bigger = build_student(_variant(vision__image_size=48, text__context_length=40)).model  # grid 4x4 -> 6x6
    inherit_weights(teacher, bigger)
    expected = {"visual.positional_embedding": sd["visual.positional_embedding"].clone(),
                "positional_embedding": sd["positional_embedding"].clone()}
    resize_pos_embed(expected, bigger)
    resize_text_pos_embed(expected, bigger)
    assert bigger.visual.positional_embedding.shape == (37, 128)
    assert torch.equal(bigger.visual.positional_embedding, expected["visual.positional_embedding"])
    assert torch.equal(bigger.positional_embedding, expected["positional_embedding"])
    # a shorter context keeps the teacher's first positions exactly (what the causal text tower sees)
    shorter = build_student(_variant(text__context_length=16)).model.eval()
    inherit_weights(teacher, shorter)
    assert torch.equal(shorter.positional_embedding, sd["positional_embedding"][:16])
    _, tokens = _inputs(context=16)
    with torch.no_grad():
        assert torch.allclose(shorter.encode_text(tokens), teacher.encode_text(_inputs()[1]), atol=1e-5)


# ---- refusals ------------------------------------------------------------------------------------------------

def _cli_error(capsys, *argv) -> str:
    assert cli_main(["inherit", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unsupported_pairs_are_refused_with_one_line(capsys, tmp_path, teacher_file):
    out = str(tmp_path / "x")
    assert "ViT image towers only" in _cli_error(capsys, "--teacher", "RN50", "--student", "tiny", "--out", out)
    assert "ViT image towers only" in _cli_error(capsys, "--teacher", TEACHER, "--student", "tiny-rn", "--out", out)
    timm = _variant(vision__timm_model_name="vit_tiny_patch16_224")
    assert "timm" in _cli_error(capsys, "--teacher", timm, "--student", "tiny", "--out", out)
    assert "more layers" in _cli_error(capsys, "--teacher", "tiny", "--student", TEACHER, "--out", out)
    odd_heads = _variant(vision__head_width=16)
    assert "head size" in _cli_error(capsys, "--teacher", TEACHER, "--pretrained", teacher_file,
                                     "--student", odd_heads, "--out", out)
    three = _variant(vision__layers=3)
    assert "keeps 2 of" in _cli_error(capsys, "--teacher", TEACHER, "--pretrained", teacher_file, "--student", three,
                                      "--image-layers", "every_other", "--out", out)
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "open_clip_config.json").write_text(json.dumps({"model_cfg": preset_config("tiny")}))
    assert "no weights file" in _cli_error(capsys, "--teacher", f"local-dir:{tmp_path / 'weightless'}",
                                           "--student", "tiny", "--out", out)
    assert not (tmp_path / "x").exists()


def test_built_non_vit_models_are_refused():
    with pytest.raises(UserError, match="ModifiedResNet"):
        towers_of(build_student("tiny-rn").model, "student tiny-rn")


@pytest.mark.parametrize("choice,message", [("all", "keeps 4"), ("2,1", "increasing"), ("0,x", "expected"),
                                            ("0,4", "0..3")])
def test_layer_choices_that_cannot_fit_are_refused(choice, message):
    with pytest.raises(UserError, match=message):
        choose_layers(choice, teacher_layers=4, student_layers=2, tower="image")


def test_layer_choices():
    assert choose_layers("uniform", 12, 4, "image") == [0, 4, 7, 11]
    assert choose_layers("uniform", 4, 1, "image") == [3]
    assert choose_layers("every_other", 12, 6, "image") == [0, 2, 4, 6, 8, 10]
    assert choose_layers("first_k", 12, 3, "text") == [0, 1, 2]
    assert choose_layers("all", 3, 3, "text") == [0, 1, 2]


# ---- activation importance -----------------------------------------------------------------------------------

def test_activation_head_scores_match_torch_attention_with_one_head_kept(teacher):
    """Oracle: a head's score is the mean norm of the block's attention output with every other head's
    out_proj columns zeroed (torch's own nn.MultiheadAttention), minus the bias."""
    images, tokens = _inputs()
    towers = towers_of(teacher, "teacher")
    kept = {"image": [0, 3], "text": [0, 3]}
    scores, embed = activation_scores(teacher, towers, kept, Calibration(images=images, tokens=tokens))
    inputs = {}
    hooks = [towers[0].blocks[2].register_forward_pre_hook(lambda m, a: inputs.__setitem__("image", a[0])),
             towers[1].blocks[2].register_forward_pre_hook(lambda m, a: inputs.__setitem__("text", a[0]))]
    with torch.no_grad():
        teacher.encode_image(images), teacher.encode_text(tokens)
    for hook in hooks:
        hook.remove()
    for tower, mask in ((towers[0], None), (towers[1], teacher.attn_mask)):
        block = tower.blocks[2]
        y = block.ln_1(inputs[tower.name])
        for h in range(tower.heads):
            attn = copy.deepcopy(block.attn)
            with torch.no_grad():
                keep = torch.zeros(tower.width, dtype=torch.bool)
                keep[h * 32:(h + 1) * 32] = True
                attn.out_proj.weight[:, ~keep] = 0
                out = attn(y, y, y, need_weights=False, attn_mask=mask)[0] - attn.out_proj.bias
            assert scores[tower.name].heads[2][h].item() == pytest.approx(out.norm(dim=-1).mean().item(), rel=1e-4)
    normalized = torch.nn.functional.normalize
    with torch.no_grad():
        expected = normalized(teacher.encode_image(images), dim=-1).abs().mean(0) + \
            normalized(teacher.encode_text(tokens), dim=-1).abs().mean(0)
    assert torch.allclose(embed, expected, atol=1e-6)


def test_cli_with_synthetic_calibration_writes_a_loadable_student(capsys, teacher_file, tmp_path):
    out = tmp_path / "calibrated"
    assert cli_main(["inherit", "--teacher", TEACHER, "--pretrained", teacher_file, "--student", "tiny", "--out",
                     str(out), "--calibration", "synthetic", "--calibration-samples", "8", "--layers", "first_k"]) == 0
    printed = capsys.readouterr().out
    assert "activations (synthetic, 8 samples)" in printed and "teacher blocks [0, 1]" in printed
    record = json.loads((out / "inherit.json").read_text())
    assert record["selection"]["image"]["layers"] == [0, 1] and len(record["selection"]["embed_dims"]) == 64
    model = open_clip.create_model(f"local-dir:{out}").eval()
    images, tokens = _inputs()
    with torch.no_grad():
        assert torch.isfinite(model.encode_image(images)).all() and torch.isfinite(model.encode_text(tokens)).all()


def test_calibration_from_a_csv_skips_unreadable_images(teacher, tmp_path):
    from PIL import Image

    from clipdistill.inherit.command import calibration_batch
    from clipdistill.models.student import image_spec_of

    rows = ["filepath\ttitle"]
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 40), color).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png\ta {color} square")
    rows.append("missing.png\ta lost square")
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    tokenizer = open_clip.get_tokenizer(TEACHER)
    batch = calibration_batch(str(tmp_path / "pairs.tsv"), 8, 0, image_spec_of(teacher), tokenizer)
    assert batch.images.shape == (3, 3, 32, 32)
    assert torch.equal(batch.tokens, tokenizer(["a red square", "a green square", "a blue square"]))
    with pytest.raises(UserError, match="no readable sample"):
        (tmp_path / "bad.tsv").write_text("filepath\ttitle\nmissing.png\ta lost square\n")
        calibration_batch(str(tmp_path / "bad.tsv"), 8, 0, image_spec_of(teacher), tokenizer)
