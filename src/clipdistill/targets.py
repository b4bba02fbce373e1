"""Where teacher embeddings come from. The training loop only knows this interface.

``LiveTeacherTargets`` runs the frozen teacher on the batch; ``CachedTeacherTargets`` reads stored
embeddings instead (``clipdistill cache``). Both take the batch dict the loader produces and return
normalized :class:`~clipdistill.Embeddings`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdistill.embeddings import Embeddings
from clipdistill.errors import UserError


class LiveTeacherTargets:
    """Run the teacher on the batch's own rendering of the shared view (``teacher_image``)."""

    def __init__(self, teacher, device: torch.device):
        self.teacher = teacher
        self.device = device

    def __call__(self, batch: dict) -> Embeddings:
        images = batch["teacher_image"].to(self.device, non_blocking=True)
        tokens = batch["teacher_text"].to(self.device, non_blocking=True)
        return self.teacher(images, tokens)


class CachedTeacherTargets:
    """Read the teacher's embeddings of the batch's views from a teacher cache.

    The loader replayed a stored view for each sample (``batch["view_index"]``), so the cached image
    embedding is the teacher's embedding of exactly the crop the student sees. Stored values
    (fp16 by default) are re-normalized in float32, as the live teacher's are.

    Args:
        cache: a :class:`clipdistill.cache.TeacherCache` (``rows(keys)``, ``image_rows``, ``text_rows``,
            ``logit_scale``, ``extras``).
        device: where the targets go.
        live: a :class:`LiveTeacherTargets` of the cached teacher for *hybrid* mode: samples the cache
            lacks are embedded live from ``teacher_image``/``teacher_text``. None (strict): they are an error.
    """

    def __init__(self, cache, device: torch.device, live: LiveTeacherTargets | None = None):
        self.cache = cache
        self.device = device
        self.live = live

    def __call__(self, batch: dict) -> Embeddings:
        rows = self.cache.rows(batch["key"])
        view_index = batch["view_index"].long()
        missing = (rows < 0) | (view_index < 0)
        if missing.any() and self.live is None:
            first = batch["key"][int(missing.nonzero()[0])]
            raise UserError(f"{int(missing.sum())} samples of this batch are not in the teacher cache "
                            f"{self.cache.directory} (first: '{first}'): build the cache over this dataset, or "
                            f"set teacher.cache_mode=hybrid to embed them live")
        found = ~missing
        if missing.any():
            image = torch.zeros(len(rows), self.cache.dim)
            text = torch.zeros(len(rows), self.cache.dim)
            image[found] = self.cache.image_rows(rows[found], view_index[found])
            text[found] = self.cache.text_rows(rows[found])
        else:  # the usual case, without the masked copies (this runs on the training process every step)
            image, text = self.cache.image_rows(rows, view_index), self.cache.text_rows(rows)
        extras = {name: self._extra(extra["values"], rows, found) for name, extra in self.cache.extras.items()}
        if missing.any():
            self._embed_live(batch, missing, image, text, extras)
        return Embeddings(image=F.normalize(image, dim=-1).to(self.device),
                          text=F.normalize(text, dim=-1).to(self.device),
                          logit_scale=self.cache.logit_scale.to(self.device), normalized=True,
                          extras={k: v.to(self.device) for k, v in extras.items()})

    @staticmethod
    def _extra(values: torch.Tensor, rows: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(rows), *values.shape[1:]), -1, dtype=values.dtype)
        out[found] = values[rows[found]]
        return out

    def _embed_live(self, batch: dict, missing: torch.Tensor, image, text, extras) -> None:
        live = self.live({"teacher_image": batch["teacher_image"][missing],
                          "teacher_text": batch["teacher_text"][missing]})
        image[missing], text[missing] = live.image.cpu(), live.text.cpu()
        # A live row's pseudo-label: its nearest stored centroid (what CID clustering assigns), if any.
        for name, extra in self.cache.extras.items():
            if "centroids" in extra:
                labels = (F.normalize(live.image.cpu(), dim=-1) @ extra["centroids"].float().T).argmax(dim=1)
                extras[name][missing] = labels.to(extras[name].dtype)
