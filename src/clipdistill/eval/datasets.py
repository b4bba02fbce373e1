"""Evaluation data sets from a one-string spec, read from the files each data set ships with.

Specs (``KIND:ARGS``):

- ``imagefolder:DIR``: one sub-folder per class (torchvision's ``ImageFolder`` order: sorted names).
  Folders named by ImageNet WordNet id (``n01440764``, any subset of the 1000) get ImageNet's names.
- ``flickr:DIR[:SPLIT]``: Flickr8k/Flickr30k as distributed: ``DIR/images/``, the token file
  (``Flickr8k.token.txt`` or Flickr30k's ``results_20130124.token``; lines ``NAME#i<TAB>caption``)
  and split lists (``Flickr_8k.<split>Images.txt``). Without SPLIT: the only split list present,
  else ``test``; with no split list at all, every image of the token file.
- ``coco:CAPTIONS_JSON:IMAGE_DIR``: a COCO captions file (``images`` + ``annotations``).
- ``csv:FILE``: open_clip's CSV/TSV (``filepath``, ``title`` columns), read by the training reader
  (:class:`clipdistill.data.CsvPairs`: same separator rule, bad rows skipped and counted); rows with
  the same image are one image with several captions. Relative paths start at FILE's folder.
- ``synthetic``: the procedural held-out sets of :mod:`clipdistill.data.synthetic`.

Classification items are ``(PIL image, label)`` with ``classnames`` and ``templates`` attributes;
retrieval items are ``(PIL image, [captions])``, every caption of the image (the standard protocol).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from clipdistill.data.csv_pairs import CsvPairs
from clipdistill.data.synthetic import SyntheticClassification, SyntheticRetrieval
from clipdistill.errors import UserError
from clipdistill.eval import prompts

AUTO = "auto"  # the eval set follows the training data: synthetic for synthetic data, none otherwise
CLASSIFICATION_KINDS = ("imagefolder", "synthetic")
RETRIEVAL_KINDS = ("flickr", "coco", "csv", "synthetic")
_FLICKR_TOKEN_FILES = ("Flickr8k.token.txt", "results_20130124.token", "Flickr30k.token.txt")
_SPLIT_LIST = re.compile(r"\.(\w+)Images\.txt$")


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


class LabeledImages(Dataset):
    """``dataset[i] -> (PIL image, label)``; names its ``classnames`` and prompt ``templates``."""

    def __init__(self, paths: list[Path], labels: list[int], classnames: list[str], templates: list):
        self.paths, self.labels = list(paths), list(labels)
        self.classnames, self.templates = list(classnames), list(templates)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return _open_rgb(self.paths[index]), self.labels[index]


class CaptionedImages(Dataset):
    """``dataset[i] -> (PIL image, list of its captions)``; ``skipped_rows``: rows of the listing not used."""

    def __init__(self, paths: list[Path], captions: list[list[str]], skipped_rows: int = 0):
        self.paths, self.captions = list(paths), [list(c) for c in captions]
        self.skipped_rows = skipped_rows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return _open_rgb(self.paths[index]), self.captions[index]


def split_spec(spec: str) -> tuple[str, str]:
    """``"flickr:/data/f8k:test"`` -> ``("flickr", "/data/f8k:test")``."""
    kind, _, rest = spec.partition(":")
    return kind, rest


# ------------------------------------------------------------------------------ classification

def classification_dataset(spec: str, classnames: str = "", templates: str = "", num_images: int = 500,
                           seed: int = 0):
    """A zero-shot / linear-probe set from ``spec``.

    ``classnames``/``templates``: a built-in set (``imagenet``, ``cifar10``) or a file; empty = guess
    from the folder names (CIFAR-10's ten names, or 1000 folders = ImageNet, else the folder names
    themselves with OpenAI's ImageNet templates).
    """
    kind, rest = split_spec(spec)
    if kind == "synthetic":
        return SyntheticClassification(num_images, seed=seed)
    if kind != "imagefolder":
        raise UserError(f"'{spec}' is not a classification dataset spec (use imagefolder:DIR or synthetic)")
    return _image_folder(Path(rest), classnames, templates)


def _image_folder(root: Path, classnames: str, templates: str) -> LabeledImages:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    try:
        folder = ImageFolder(str(root))
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise UserError(f"{root}: {err}") from None
    names, prompt_set = _class_names_for(folder.classes, classnames)
    if len(names) != len(folder.classes):
        shown = ", ".join(folder.classes[:3]) + (", ..." if len(folder.classes) > 3 else "")
        raise UserError(f"{len(names)} class names for {len(folder.classes)} class folders in {root} ({shown}): "
                        f"give --classnames FILE with one name per folder, in sorted folder order, or leave it "
                        f"empty to use the folder names")
    chosen_templates = prompts.templates(templates or prompt_set)
    return LabeledImages([Path(p) for p, _ in folder.samples], [label for _, label in folder.samples],
                         names, chosen_templates)


def _class_names_for(folders: list[str], classnames: str) -> tuple[list[str], str]:
    """(names, default prompt set) for these class folders."""
    if classnames == "imagenet" and prompts.are_wordnet_ids(folders):  # any subset of ImageNet-1k
        return prompts.imagenet_names_of(folders, where="class folders"), "imagenet"
    if classnames:
        return prompts.classnames(classnames), classnames if classnames in prompts.BUILT_IN else "imagenet"
    if folders == prompts.classnames("cifar10"):
        return folders, "cifar10"
    if prompts.are_wordnet_ids(folders):  # ImageNet's layout: n01440764/ ... -> "tench"
        return prompts.imagenet_names_of(folders, where="class folders"), "imagenet"
    if len(folders) == 1000:  # ImageNet's sorted WordNet-id folders are open_clip's class order
        return prompts.classnames("imagenet"), "imagenet"
    return [name.replace("_", " ") for name in folders], "imagenet"


# ----------------------------------------------------------------------------------- retrieval

def retrieval_dataset(spec: str, num_images: int = 500, seed: int = 0, separator: str = "auto"):
    """A retrieval set (every caption of every image) from ``spec``; ``separator``: of a ``csv:`` file."""
    kind, rest = split_spec(spec)
    if kind == "synthetic":
        return SyntheticRetrieval(num_images, seed=seed)
    if kind == "flickr":
        return flickr(rest)
    if kind == "coco":
        captions_json, _, image_dir = rest.rpartition(":")
        if not captions_json:
            raise UserError(f"coco spec needs coco:CAPTIONS_JSON:IMAGE_DIR, got '{spec}'")
        return coco(Path(captions_json), Path(image_dir))
    if kind == "csv":
        return csv_captions(Path(rest), separator=separator)
    raise UserError(f"unknown retrieval dataset '{spec}' (kinds: {', '.join(RETRIEVAL_KINDS)})")


def _group(pairs) -> tuple[list, list[list[str]]]:
    """(key, caption) pairs -> keys in first-seen order and each key's captions."""
    captions = defaultdict(list)
    for key, caption in pairs:
        captions[key].append(caption)
    keys = list(captions)
    return keys, [captions[key] for key in keys]


def flickr(rest: str) -> CaptionedImages:
    root, split = _flickr_root_and_split(rest)
    token_file = next((root / name for name in _FLICKR_TOKEN_FILES if (root / name).is_file()), None)
    if token_file is None:
        raise UserError(f"no Flickr token file in {root} (expected one of {', '.join(_FLICKR_TOKEN_FILES)})")
    pairs = []
    for line in token_file.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            name_and_index, caption = line.split("\t", 1)
            pairs.append((name_and_index.split("#")[0], caption.strip()))
    names, captions = _group(pairs)
    wanted = _flickr_split_images(root, split)
    if wanted is not None:
        kept = [(n, c) for n, c in zip(names, captions) if n in wanted]
        if not kept:
            raise UserError(f"no image of split '{split}' has captions in {token_file}")
        names, captions = zip(*kept)
    return CaptionedImages([root / "images" / name for name in names], captions)


def _flickr_root_and_split(rest: str) -> tuple[Path, str]:
    head, _, tail = rest.rpartition(":")
    if head and "/" not in tail and Path(head).is_dir():
        return Path(head), tail
    return Path(rest), ""


def _flickr_split_images(root: Path, split: str) -> set[str] | None:
    """The image names of ``split`` (chosen as the module doc says); None = use every image."""
    if not root.is_dir():
        raise UserError(f"Flickr directory not found: {root}")
    lists = {m.group(1): p for p in root.iterdir() if (m := _SPLIT_LIST.search(p.name))}
    if not lists:
        if split:
            raise UserError(f"split '{split}' asked but {root} has no *.{split}Images.txt list")
        return None
    if not split:
        split = next(iter(lists)) if len(lists) == 1 else "test"
    if split not in lists:
        raise UserError(f"no split list for '{split}' in {root} (available: {', '.join(sorted(lists))})")
    return {line.strip() for line in lists[split].read_text().splitlines() if line.strip()}


def coco(captions_json: Path, image_dir: Path) -> CaptionedImages:
    if not captions_json.is_file():
        raise UserError(f"COCO captions file not found: {captions_json}")
    data = json.loads(captions_json.read_text())
    if not {"images", "annotations"} <= set(data):
        raise UserError(f"{captions_json} is not a COCO captions file (needs 'images' and 'annotations')")
    by_image = defaultdict(list)
    for annotation in data["annotations"]:
        by_image[annotation["image_id"]].append(annotation["caption"].strip())
    images = [image for image in data["images"] if by_image[image["id"]]]
    return CaptionedImages([image_dir / image["file_name"] for image in images],
                           [by_image[image["id"]] for image in images])


def csv_captions(path: Path, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "auto") -> CaptionedImages:
    """The same reader as training: a malformed row is skipped, counted and named, never the file's end."""
    pairs = CsvPairs(path, image_key=image_key, caption_key=caption_key, separator=separator)
    paths, captions = _group((pairs.image_path(i), pairs.captions[i]) for i in range(len(pairs)))
    return CaptionedImages(paths, captions, skipped_rows=sum(pairs.bad.values()))


# --------------------------------------------------------------------------------- what was used

def describe(dataset) -> dict:
    """What an evaluation ran on, for its result record: counts, and the class names it scored."""
    if hasattr(dataset, "classnames"):
        return {"images": len(dataset), "classes": len(dataset.classnames), "classnames": list(dataset.classnames)}
    if hasattr(dataset, "captions"):
        captions = sum(len(c) for c in dataset.captions)
    else:  # synthetic: a fixed number per image, known without rendering any
        captions = len(dataset) * dataset.captions_per_image
    info = {"images": len(dataset), "captions": captions}
    if getattr(dataset, "skipped_rows", 0):
        info["skipped_rows"] = dataset.skipped_rows
    return info


def eval_specs_for(data_kind: str, retrieval: str, zero_shot: str) -> tuple[str, str]:
    """Resolve ``auto`` eval specs against the training data: the procedural held-out sets only score a
    model trained on the procedural data; on your own data nothing is evaluated unless you name a set."""
    default = "synthetic" if data_kind == "synthetic" else ""
    return tuple(default if spec == AUTO else spec for spec in (retrieval, zero_shot))


def describe_eval(retrieval: str, zero_shot: str, linear_probe: str = "", linear_probe_train: str = "") -> str:
    """One line for a training banner: the eval sets in use (resolved specs), or how to add one."""
    sets = [f"{task} {spec}" for task, spec in (("retrieval", retrieval), ("zero-shot", zero_shot),
                                                ("linear probe", linear_probe)) if spec]
    if linear_probe:
        sets[-1] += f" (trained on {linear_probe_train})"
    if sets:
        return "eval: " + "; ".join(sets)
    return ("eval: none (set eval.retrieval=csv:FILE | flickr:DIR | coco:JSON:DIR, "
            "eval.zero_shot=imagefolder:DIR to evaluate)")
