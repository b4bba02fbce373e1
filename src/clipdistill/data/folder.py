"""Images without captions: a folder tree (``data.kind: folder``).

Every image file under the folder, at any depth, in sorted path order; its key is its path relative to
the folder. Images directly in class sub-folders (``DIR/cat/1.jpg``) carry the sub-folder as a label,
in torchvision ``ImageFolder`` order (sorted names), for anyone who wants it (a linear probe); training
ignores it. Samples have no caption: the run trains the image tower on image terms only (see
``clipdistill.build.check_captions``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from clipdistill.data.bad_samples import decode_image
from clipdistill.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageFolderImages(torch.utils.data.Dataset):
    """``dataset[i] -> {"image": PIL RGB, "caption": None, "key": relative path, "label": class or -1}``.

    Images are decoded lazily (a bad file raises :class:`~clipdistill.data.BadSample`, counted and replaced).
    """

    has_captions = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"image folder not found: {self.path} (data.kind=folder needs data.path=DIR)")
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {self.path}")
        self.classes = sorted({p.parent.name for p in self.files if p.parent != self.path})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[p.parent.name] if p.parent != self.path else -1 for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        file = self.files[index]
        return {"image": decode_image(file), "caption": None, "key": file.relative_to(self.path).as_posix(),
                "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ImageFolderImages('{self.path}', {len(self.files)} images, {len(self.classes)} class folders)"
