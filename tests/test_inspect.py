"""``clipdistill inspect``: the resolved model, printed before anything expensive is paid for."""
import json

import open_clip
import pytest
import torch

from clipdistill.cache.manifest import weights_fingerprint
from clipdistill.cli import main
from clipdistill.models import build_student


def _inspect(capsys, *argv):
    code = main(["inspect", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_random_tiny_architecture(capsys):
    torch.manual_seed(0)
    code, out, _ = _inspect(capsys, "tiny", "--json")
    info = json.loads(out)
    torch.manual_seed(0)
    model = build_student("tiny").model
    assert code == 0
    assert info["architecture"] == "tiny" and info["weights"] == "random"
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and info["embed_dim"] == 64
    assert info["preprocess"] == {"size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                                  "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                                  "resize_mode": "shortest"}
    assert info["tokenizer"] == "SimpleTokenizer" and info["context_length"] == 32
    assert info["activation"] == "gelu" and info["logit_bias"] is None
    assert info["logit_scale"] == pytest.approx(1 / 0.07, abs=1e-3)
    assert info["fingerprint"] == weights_fingerprint(model)[:16]  # same seed, same weights, same fingerprint


def test_siglip_style_folder_as_a_table(capsys, tmp_path):
    pytest.importorskip("transformers")
    from real_teachers import make_siglip_style_folder

    folder = make_siglip_style_folder(tmp_path / "model")
    code, out, _ = _inspect(capsys, f"local-dir:{folder}")
    assert code == 0
    rows = {line[:15].strip(): line[16:] for line in out.strip().splitlines()}  # a 15-character name column
    assert rows["architecture"] == "model" and rows["embedding dim"] == "32"
    assert rows["mean"] == "0.5, 0.5, 0.5" and rows["std"] == "0.5, 0.5, 0.5"
    assert rows["interpolation"] == "bilinear" and rows["resize mode"] == "squash" and rows["image size"] == "32"
    assert rows["tokenizer"].startswith("HFTokenizer (") and rows["tokenizer"].endswith("vocabulary 19)") and rows["context length"] == "8"
    assert rows["logit bias"] == "-7.5" and rows["logit scale"] == "10.0" and rows["activation"] == "gelu"
    assert rows["fingerprint"].startswith("sha256 ") and len(rows["fingerprint"]) == len("sha256 ") + 16


def test_bad_specs_are_one_line_and_exit_2(capsys, tmp_path):
    code, _, err = _inspect(capsys, "no-such-arch-xyz")
    assert code == 2 and err.count("\n") == 1 and "unknown model 'no-such-arch-xyz'" in err
    (tmp_path / "w.pt").write_bytes(b"")  # the tag is checked before the file is read
    code, _, err = _inspect(capsys, f"openclip:PE-Core-T-16-384@laion9000:{tmp_path / 'w.pt'}")
    assert code == 2 and "'laion9000' is not an open_clip pretrained tag of PE-Core-T-16-384" in err
    code, _, err = _inspect(capsys, f"local-dir:{tmp_path / 'absent'}")
    assert code == 2 and "folder not found" in err
