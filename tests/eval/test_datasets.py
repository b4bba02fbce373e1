"""Dataset specs read the files each data set ships with; bad specs are one-line UserErrors."""
import json

import pytest

from clipdistill.errors import UserError
from clipdistill.eval import evaluate_zero_shot
from clipdistill.eval.datasets import classification_dataset, retrieval_dataset


def _flickr(root, splits, solid_image):
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        solid_image(i).save(root / "images" / f"im{i}.jpg")
        lines += [f"im{i}.jpg#{c}\tcaption {c} of image {i} ." for c in range(3)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, names in splits.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return root


def test_flickr_groups_all_captions_and_uses_the_only_split(tmp_path, solid):
    root = _flickr(tmp_path / "f8k", {"dev": ["im1.jpg", "im3.jpg"]}, solid)
    dataset = retrieval_dataset(f"flickr:{root}")
    assert [p.name for p in dataset.paths] == ["im1.jpg", "im3.jpg"]
    assert dataset.captions[1] == [f"caption {c} of image 3 ." for c in range(3)]
    image, captions = dataset[0]
    assert image.size == (12, 12) and len(captions) == 3


def test_flickr_split_choice(tmp_path, solid):
    root = _flickr(tmp_path / "f8k", {"train": ["im0.jpg", "im1.jpg"], "test": ["im2.jpg"]}, solid)
    assert [p.name for p in retrieval_dataset(f"flickr:{root}").paths] == ["im2.jpg"]  # test by default
    assert [p.name for p in retrieval_dataset(f"flickr:{root}:train").paths] == ["im0.jpg", "im1.jpg"]
    with pytest.raises(UserError, match="available: test, train"):
        retrieval_dataset(f"flickr:{root}:dev")


def test_flickr_without_split_lists_uses_every_image(tmp_path, solid):
    assert len(retrieval_dataset(f"flickr:{_flickr(tmp_path / 'f', {}, solid)}")) == 4


def test_coco_and_csv(tmp_path, solid):
    for i in range(3):
        solid(i).save(tmp_path / f"{i}.png")
    coco = {"images": [{"id": 7, "file_name": "2.png"}, {"id": 5, "file_name": "0.png"}],
            "annotations": [{"image_id": 5, "caption": "a "}, {"image_id": 7, "caption": "b"},
                            {"image_id": 5, "caption": "c"}]}
    (tmp_path / "cap.json").write_text(json.dumps(coco))
    dataset = retrieval_dataset(f"coco:{tmp_path / 'cap.json'}:{tmp_path}")
    assert [p.name for p in dataset.paths] == ["2.png", "0.png"] and dataset.captions == [["b"], ["a", "c"]]
    (tmp_path / "pairs.csv").write_text("filepath,title\n1.png,x\n0.png,y\n1.png,z\n")
    dataset = retrieval_dataset(f"csv:{tmp_path / 'pairs.csv'}")
    assert [p.name for p in dataset.paths] == ["1.png", "0.png"] and dataset.captions == [["x", "z"], ["y"]]


def _folder(root, class_names, solid_image, per_class=2):
    for label, name in enumerate(class_names):
        (root / name).mkdir(parents=True)
        for v in range(per_class):
            solid_image(label, v).save(root / name / f"{v}.png")
    return root


def test_cifar10_folders_get_cifar10_names_and_18_templates(tmp_path, solid):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dataset = classification_dataset(f"imagefolder:{_folder(tmp_path / 'c', names, solid, 1)}")
    assert dataset.classnames == names and len(dataset.templates) == 18
    assert dataset.templates[0] == "a photo of a {c}."
    assert len(classification_dataset(f"imagefolder:{tmp_path / 'c'}", templates="imagenet").templates) == 80


def test_zero_shot_on_image_folder_oracle_and_shuffled(tmp_path, solid, oracle_encoder):
    names = [f"c{i}" for i in range(8)]
    perfect = classification_dataset(f"imagefolder:{_folder(tmp_path / 'ok', names, solid)}", templates="cifar10")
    assert evaluate_zero_shot(oracle_encoder, perfect, batch_size=5)["acc1"] == 1.0
    # Folder k holds images of index (k + 3) mod 8: every prediction is wrong.
    root = tmp_path / "shuffled"
    for label in range(8):
        (root / f"c{label}").mkdir(parents=True)
        solid((label + 3) % 8).save(root / f"c{label}" / "0.png")
    metrics = evaluate_zero_shot(oracle_encoder, classification_dataset(f"imagefolder:{root}"))
    assert metrics["acc1"] == 0.0 and metrics["mean_per_class_recall"] == 0.0


@pytest.mark.parametrize("spec", ["imagefolder:/no/such/dir", "flickr:/no/such/dir", "mnist:x", "csv:/no.csv"])
def test_bad_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        (classification_dataset if spec.startswith(("imagefolder", "mnist")) else retrieval_dataset)(spec)
