"""Eval sets follow the data, WordNet-id folders get ImageNet's names, and the JSON says what was scored."""
import json

import open_clip
import pytest
import torch

from clipdistill import config as config_lib
from clipdistill.cli import main as cli
from clipdistill.errors import UserError
from clipdistill.eval import prompts
from clipdistill.eval.datasets import classification_dataset, describe_eval, eval_specs_for
from clipdistill.models import build_student
from clipdistill.train.evaluation import Evaluator


def _folder(root, names, solid, per_class=2):
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for v in range(per_class):
            solid(label * 9, v).save(root / name / f"{v}.png")
    return root


# ------------------------------------------------------------------ ImageNet WordNet ids -> names

def test_shipped_wordnet_ids_are_timms_list_in_open_clips_class_order():
    from importlib import resources

    wnids = prompts.imagenet_wordnet_ids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    timm_list = resources.files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text().split()
    assert list(wnids) == timm_list  # the oracle: timm's ImageNet-1k synsets, class-index order
    lemmas = dict(line.split("\t", 1) for line in
                  resources.files("timm.data").joinpath("_info/imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    names = open_clip.IMAGENET_CLASSNAMES
    # open_clip's (OpenAI's) names are edited lemmas; where the first lemma is one plain word they agree.
    same = [i for i, w in enumerate(wnids) if names[i].lower() == lemmas[w].split(",")[0].strip().lower()]
    assert len(same) > 400
    assert (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet paper")


def test_wordnet_id_folders_get_imagenet_names(tmp_path, solid):
    wnids = ["n01440764", "n01443537", "n15075141"]  # tench, goldfish, toilet paper: a subset
    dataset = classification_dataset(f"imagefolder:{_folder(tmp_path / 'in', wnids, solid)}")
    assert dataset.classnames == ["tench", "goldfish", "toilet paper"]
    assert len(dataset.templates) == 80  # ImageNet's prompts
    explicit = classification_dataset(f"imagefolder:{tmp_path / 'in'}", classnames="imagenet")
    assert explicit.classnames == dataset.classnames


def test_wordnet_like_folders_outside_imagenet_1k_say_what_would_work(tmp_path, solid):
    _folder(tmp_path / "x", ["n01440764", "n99999999"], solid, per_class=1)
    with pytest.raises(UserError) as err:
        classification_dataset(f"imagefolder:{tmp_path / 'x'}")
    message = str(err.value)
    assert "n99999999" in message and "--classnames FILE" in message and "one name per line" in message


def test_classnames_errors_say_what_would_work(tmp_path, solid):
    root = _folder(tmp_path / "f", ["cat", "dog"], solid, per_class=1)
    with pytest.raises(UserError, match=r"use imagenet or cifar10, a text file with one name per line, or a JSON"):
        classification_dataset(f"imagefolder:{root}", classnames="no-such-set")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError) as err:
        classification_dataset(f"imagefolder:{root}", classnames=str(tmp_path / "three.txt"))
    assert "3 class names for 2 class folders" in str(err.value) and "in sorted folder order" in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        classification_dataset(f"imagefolder:{root}", classnames=str(tmp_path / "bad.json"))


# ---------------------------------------------------------------------- defaults follow the data

def test_eval_sets_follow_the_training_data():
    cfg = config_lib.load()
    assert (cfg.eval.retrieval, cfg.eval.zero_shot) == ("auto", "auto")
    assert eval_specs_for("synthetic", "auto", "auto") == ("synthetic", "synthetic")
    assert eval_specs_for("csv", "auto", "auto") == ("", "")
    assert eval_specs_for("webdataset", "csv:val.csv", "auto") == ("csv:val.csv", "")
    assert eval_specs_for("csv", "synthetic", "") == ("synthetic", "")  # asked for: still honoured


def test_training_evaluator_on_own_data_evaluates_nothing_unless_asked():
    own = Evaluator(retrieval="auto", zero_shot="auto", num_images=8, seed=0, batch_size=8, data_kind="csv")
    assert own.retrieval is None and own.zero_shot is None and own.specs == {"retrieval": "", "zero_shot": ""}
    shapes = Evaluator(retrieval="auto", zero_shot="auto", num_images=8, seed=0, batch_size=8, data_kind="synthetic")
    assert len(shapes.retrieval) == 8 and len(shapes.zero_shot) == 8


def test_describe_eval_for_the_banner():
    assert describe_eval("", "").startswith("eval: none (set eval.retrieval=csv:FILE")
    assert describe_eval("synthetic", "imagefolder:val") == "eval: retrieval synthetic; zero-shot imagefolder:val"
    assert describe_eval("", "", "imagefolder:te", "imagefolder:tr") == \
        "eval: linear probe imagefolder:te (trained on imagefolder:tr)"


# ------------------------------------------------------------------- the result JSON's "evaluated"

@pytest.fixture
def student(tmp_path):
    torch.manual_seed(0)
    model = build_student("tiny")
    torch.save({"student": model.model.state_dict(), "config": {"student": {"model": "tiny"}}}, tmp_path / "run.pt")
    return str(tmp_path / "run.pt")


def test_eval_json_records_images_captions_and_skipped_rows_of_a_csv(tmp_path, student, solid):
    rows = []
    for i in range(5):
        solid(i).save(tmp_path / f"{i}.png")
        rows += [f"{i}.png,caption a of {i}", f"{i}.png,caption b of {i}"]
    rows.insert(3, '2.png,"an unclosed quote')
    (tmp_path / "pairs.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert cli(["eval", "--model", student, "--task", "zeroshot_retrieval", "--dataset", f"csv:{tmp_path / 'pairs.csv'}",
                "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    assert json.loads(out.read_text())["evaluated"] == {"images": 5, "captions": 10, "skipped_rows": 1}


def test_eval_json_records_class_names_and_the_probe_training_set(tmp_path, student, solid):
    test_set = _folder(tmp_path / "test", ["n01440764", "n01443537"], solid, per_class=2)
    train_set = _folder(tmp_path / "train", ["n01440764", "n01443537"], solid, per_class=3)
    (tmp_path / "t.txt").write_text("a photo of a {c}.\n")
    out = tmp_path / "zs.json"
    assert cli(["eval", "--model", student, "--task", "zeroshot_classification", "--dataset", f"imagefolder:{test_set}",
                "--output", str(out), "--workers", "0", "--no-progress", "--templates", str(tmp_path / "t.txt")]) == 0
    assert json.loads(out.read_text())["evaluated"] == {"images": 4, "classes": 2, "classnames": ["tench", "goldfish"]}
    out = tmp_path / "lp.json"
    assert cli(["eval", "--model", student, "--task", "linear_probe", "--dataset", f"imagefolder:{test_set}",
                "--train-dataset", f"imagefolder:{train_set}", "--output", str(out), "--workers", "0",
                "--no-progress", "--lp-epochs", "1", "--val-proportion", "0"]) == 0
    assert json.loads(out.read_text())["evaluated"] == {
        "images": 4, "classes": 2, "classnames": ["tench", "goldfish"],
        "train": {"dataset": f"imagefolder:{train_set}", "images": 6, "classes": 2}}
