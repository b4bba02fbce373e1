"""Which dataset a config's ``data.kind`` names."""
from __future__ import annotations

from clipdistill.data.csv_pairs import CsvPairs
from clipdistill.data.folder import ImageFolderImages
from clipdistill.data.shards import ShardPairs
from clipdistill.data.synthetic import SyntheticPairs
from clipdistill.errors import UserError

KINDS = ("synthetic", "csv", "webdataset", "folder")


def build_dataset(kind: str, *, path: str = "", num_samples: int = 0, seed: int = 0, image_key: str = "filepath",
                  caption_key: str = "title", separator: str = "auto"):
    """The dataset of ``kind``: ``"synthetic"`` (num_samples, seed), ``"csv"`` (path, keys, separator) or
    ``"webdataset"`` (path: shard pattern or folder; shards without ``.txt`` members are images only) or
    ``"folder"`` (path: a folder tree of images, no captions)."""
    if kind == "synthetic":
        if num_samples <= 0:
            raise UserError(f"the synthetic dataset needs a positive number of samples, got {num_samples}")
        return SyntheticPairs(num_samples, seed=seed)
    if kind == "csv":
        if not path:
            raise UserError("the csv dataset needs a path to a CSV/TSV file of image paths and captions")
        return CsvPairs(path, image_key=image_key, caption_key=caption_key, separator=separator)
    if kind == "webdataset":
        return ShardPairs(path)
    if kind == "folder":
        if not path:
            raise UserError("the folder dataset needs data.path: a folder of images (class sub-folders allowed)")
        return ImageFolderImages(path)
    raise UserError(f"unknown dataset kind '{kind}' (available: {', '.join(KINDS)})")

