"""End to end: a folder of photos without captions -> train an image tower against the teacher's text tower
-> zero-shot through that text tower -> export -> open_clip alone loads a model whose image and text
embeddings are comparable (the text ones are the teacher's)."""
import json

import open_clip
import pytest
import torch
import yaml
from PIL import Image

from clipdistill.cli import main as cli
from clipdistill.eval.zero_shot import evaluate_zero_shot
from clipdistill.eval.datasets import classification_dataset
from clipdistill.models import load_teacher
from clipdistill.models.load_any import load_model
from clipdistill.train import checkpoint

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 30, 220)}


def write_photos(root, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = torch.randint(-25, 25, (36, 40, 3), generator=g)
            pixels = (torch.tensor(color) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return write_photos(root / "train", 8, seed=0), write_photos(root / "test", 3, seed=1)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(load_teacher("openclip", model="tiny-teacher").encoder.state_dict(), path)
    return path


def write_config(path, train, teacher_file, test):
    # Two prompts, not open_clip's 80: the zero-shot classifier is most of this test's time otherwise.
    (path.parent / "templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    path.write_text(yaml.safe_dump({
        "student": {"model": "tiny", "text_tower": "teacher"},
        "teacher": {"source": "checkpoint", "model": "tiny-teacher", "path": str(teacher_file)},
        "data": {"kind": "folder", "path": str(train), "workers": 0},
        "losses": {"fd": {"weight": 1.0}, "crd_image": {"weight": 1.0}},
        "train": {"steps": 3, "batch_size": 6, "progress": False, "log_every": 1},
        "optim": {"warmup_steps": 1},
        "eval": {"zero_shot": f"imagefolder:{test}", "retrieval": "", "fidelity": False,
                 "templates": str(path.parent / "templates.txt")}}))
    return path


@pytest.mark.slow  # 12-30 s on a shared 2-core machine (three CLI commands, two zero-shot evaluations)
def test_folder_train_eval_export_open_clip(tmp_path, photos, teacher_file):
    train, test = photos
    config = write_config(tmp_path / "image_only.yaml", train, teacher_file, test)
    assert cli(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["acc1"] <= 1.0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert state["student_build"]["reused_tower"] == "text"
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(teacher_file))
    frozen = {k: v for k, v in teacher.encoder.state_dict().items() if not k.startswith(("visual.", "logit"))}
    assert all(torch.equal(state["student"][k], v) for k, v in frozen.items())  # never trained
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "crd_image" in line] == [1, 2, 3]

    # Zero-shot through the teacher's text tower, from the checkpoint.
    assert cli(["eval", "--model", str(tmp_path / "run"), "--task", "zeroshot_classification", "--dataset",
                f"imagefolder:{test}", "--output", str(tmp_path / "zs.json"), "--no-progress", "--workers", "0",
                "--templates", str(tmp_path / "templates.txt")]) == 0
    zero_shot = json.loads((tmp_path / "zs.json").read_text())["metrics"]
    assert zero_shot["acc1"] == pytest.approx(results["metrics"]["acc1"])

    # Export: one complete open_clip model, loadable without clipdistill.
    assert cli(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    tokens = tokenizer(["a photo of a red thing", "a photo of a blue thing"])
    images = torch.randn(2, 3, 32, 32)
    run = load_model(str(tmp_path / "run"))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens, normalize=True), teacher.encode_text(tokens),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_image(images, normalize=True), run.encoder.encode_image(images))
        assert model.encode_image(images).shape[1] == teacher.embed_dim  # comparable with the teacher's text
    exported = load_model(str(tmp_path / "export"))
    dataset = classification_dataset(f"imagefolder:{test}", "", str(tmp_path / "templates.txt"))
    again = evaluate_zero_shot(exported.encoder, dataset, batch_size=16, workers=0, progress=False)
    assert again["acc1"] == pytest.approx(zero_shot["acc1"])


@pytest.mark.slow
def test_from_a_cache_of_the_folder_the_tower_is_the_cached_teachers(tmp_path, photos, teacher_file):
    train, test = photos
    config = write_config(tmp_path / "image_only.yaml", train, teacher_file, test)
    assert cli(["cache", str(config), "--out", str(tmp_path / "cache"), "cache.shard_size=10"]) == 0
    assert cli(["train", str(config), "--out", str(tmp_path / "run"), "teacher.source=cache",
                f"teacher.path={tmp_path / 'cache'}", "teacher.model="]) == 0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    teacher = load_teacher("checkpoint", model="tiny-teacher", path=str(teacher_file))
    for key, value in teacher.encoder.state_dict().items():
        if not key.startswith(("visual.", "logit")):
            assert torch.equal(state["student"][key], value), key


def test_a_caption_free_run_refuses_a_text_loss_in_one_line(tmp_path, photos, teacher_file, capsys):
    train, test = photos
    config = write_config(tmp_path / "image_only.yaml", train, teacher_file, test)
    assert cli(["train", str(config), "--out", str(tmp_path / "run"), "losses.clip.weight=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss 'clip' needs captions" in err[0]
