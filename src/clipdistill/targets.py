"""Where teacher embeddings come from. The training loop knows only this interface.

A *targets* object answers two questions, and the loop asks nothing else about the teacher:

- ``loader_needs(student)``: what the data loader must add to each batch for it: the crop rendered
  in the teacher's ImageSpec and the captions in its tokenizer (a live teacher), the stored views to
  replay and the cache rows to gather in the DataLoader workers (a cache). A :class:`LoaderNeeds`.
- ``targets(batch)``: the teacher's normalized :class:`~clipdistill.Embeddings` of that batch.

``LiveTeacherTargets`` runs the frozen teacher on the batch; ``CachedTeacherTargets`` reads stored
embeddings (``clipdistill cache``), embedding live only what the cache lacks in *hybrid* mode.
``EnsembleTargets`` serves every teacher of a run (one per ``teachers:`` entry, or the one ``teacher:``)
through the same two questions, each member with its own batch keys (:class:`BatchKeys`); its targets
are a :class:`~clipdistill.ensemble.TeacherEnsemble`. :func:`clipdistill.build.targets_from` builds it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clipdistill.embeddings import Embeddings
from clipdistill.ensemble import TeacherEnsemble
from clipdistill.errors import UserError

log = logging.getLogger("clipdistill.train")


@dataclass
class LoaderNeeds:
    """What a targets object asks the training loader to put into every batch.

    Attributes:
        specs: batch key -> ImageSpec to render the sampled crop in (``teacher_image``).
        tokenizers: batch key -> tokenizer for the captions (``teacher_text``).
        views: a cache's stored views: each sample replays one of them instead of sampling a crop.
        batch_extras: runs on each collated batch inside the DataLoader workers (cache row gathering).
    """

    specs: dict = field(default_factory=dict)
    tokenizers: dict = field(default_factory=dict)
    views: object | None = None
    batch_extras: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class BatchKeys:
    """Where one teacher's inputs travel in a batch: its rendering of the crop, its tokens, its gathered cache rows.

    The one teacher of a run uses the plain names; teacher ``k`` > 0 of an ensemble ``teacher{k}_...``
    (:meth:`of_member`), so every teacher gets its own preprocessing and tokenizer in the same batch.
    """

    image: str = "teacher_image"
    text: str = "teacher_text"
    stored: str = "teacher_stored"

    @classmethod
    def of_member(cls, index: int) -> "BatchKeys":
        return cls() if index == 0 else cls(f"teacher{index}_image", f"teacher{index}_text", f"teacher{index}_stored")


class LiveTeacherTargets:
    """Run the teacher on the batch's own rendering of the shared view (``teacher_image``, or ``keys.image``)."""

    def __init__(self, teacher, device: torch.device, keys: BatchKeys = BatchKeys()):
        self.teacher = teacher
        self.device = device
        self.keys = keys
        self._context_reported = False

    @property
    def dim(self) -> int:
        return self.teacher.embed_dim

    def loader_needs(self, student) -> LoaderNeeds:
        """The teacher's rendering of each crop, and its tokens: the student's own tensor when they provably
        agree (the usual case: open_clip's BPE at the same context), so nothing is tokenized twice."""
        from clipdistill.models import same_tokenizer

        same = same_tokenizer(self.teacher.tokenizer, student.tokenizer)
        return LoaderNeeds(specs={self.keys.image: self.teacher.image_spec},
                           tokenizers={self.keys.text: student.tokenizer if same else self.teacher.tokenizer})

    def __call__(self, batch: dict) -> Embeddings:
        tokens = batch.get(self.keys.text)  # absent for caption-free data: image embeddings only
        if not self._context_reported and "caption" in batch and tokens is not None:
            self._report_truncation(batch["caption"])
        images = batch[self.keys.image].to(self.device, non_blocking=True)
        return self.teacher(images, tokens.to(self.device, non_blocking=True) if tokens is not None else None)

    def _report_truncation(self, captions: list[str]) -> None:
        """Once per run: captions longer than the teacher's context (PE-Core 32 tokens, SigLIP 64) are cut
        for the teacher only, which a user should know before trusting its targets."""
        from clipdistill.models.guards import context_length_of, count_truncated

        self._context_reported = True
        truncated = count_truncated(self.teacher.tokenizer, captions)
        if truncated:
            log.warning("%d of the first batch's %d captions are longer than the teacher's context (%s tokens): "
                        "the teacher sees them truncated", truncated, len(captions),
                        context_length_of(self.teacher.tokenizer))


class StoredRows:
    """The worker half of :class:`CachedTeacherTargets`: gathers a batch's stored rows where it is collated.

    Given to the loader as ``batch_extras``, it runs inside the DataLoader workers next to image
    decoding, so the training process only moves the result to its device. It returns
    ``{"teacher_stored": {...}}`` (``{key: {...}}``): ``rows`` (-1 where a key is not in the cache), ``missing``
    (bool), ``image``/``text`` ``(B, D)`` float32 re-normalized (zeros where missing) and ``extras``.
    Picklable cheaply: a :class:`~clipdistill.cache.TeacherCache` pickles as its directory.
    """

    def __init__(self, cache, key: str = "teacher_stored"):
        self.cache = cache
        self.key = key

    def __call__(self, batch: dict) -> dict:
        return {self.key: self.gather(batch["key"], batch["view_index"])}

    def gather(self, keys: list[str], view_index: torch.Tensor) -> dict:
        rows = self.cache.rows(keys)
        view_index = view_index.long()
        missing = (rows < 0) | (view_index < 0)
        found = ~missing
        if missing.any():
            image = torch.zeros(len(rows), self.cache.dim)
            text = torch.zeros(len(rows), self.cache.dim)
            image[found] = self.cache.image_rows(rows[found], view_index[found])
            text[found] = self.cache.text_rows(rows[found])
        else:  # the usual case, without the masked copies
            image, text = self.cache.image_rows(rows, view_index), self.cache.text_rows(rows)
        # Stored values (fp16 by default) are re-normalized in float32, as the live teacher's are.
        extras = {name: _extra(extra["values"], rows, found) for name, extra in self.cache.extras.items()}
        return {"rows": rows, "missing": missing, "image": F.normalize(image, dim=-1),
                "text": F.normalize(text, dim=-1), "extras": extras}


def _extra(values: torch.Tensor, rows: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    out = torch.full((len(rows), *values.shape[1:]), -1, dtype=values.dtype)
    out[found] = values[rows[found]]
    return out


class CachedTeacherTargets:
    """Read the teacher's embeddings of the batch's views from a teacher cache.

    The loader replayed a stored view for each sample (``batch["view_index"]``), so the cached image
    embedding is the teacher's embedding of exactly the crop the student sees. The rows are gathered
    by :class:`StoredRows`, in the DataLoader workers when the loader was given it (``batch_extras``:
    ``batch["teacher_stored"]``), else here.

    Args:
        cache: a :class:`clipdistill.cache.TeacherCache` (``rows(keys)``, ``image_rows``, ``text_rows``,
            ``logit_scale``, ``extras``).
        device: where the targets go.
        live: a :class:`LiveTeacherTargets` of the cached teacher for *hybrid* mode: samples the cache
            lacks are embedded live from its ``teacher_image``/``teacher_text``. None (strict): they are an error.
        keys: its batch keys (``keys.stored``: the gathered rows); a hybrid ``live`` teacher uses the same.
    """

    def __init__(self, cache, device: torch.device, live: LiveTeacherTargets | None = None,
                 keys: BatchKeys = BatchKeys()):
        self.cache = cache
        self.device = device
        self.live = live
        self.stored_rows = StoredRows(cache, keys.stored)

    @property
    def dim(self) -> int:
        return self.cache.dim

    @property
    def teacher(self):
        """The live teacher of hybrid mode (None in strict mode)."""
        return self.live.teacher if self.live is not None else None

    def loader_needs(self, student) -> LoaderNeeds:
        """Replay the stored views and gather their rows in the workers; in hybrid mode, also what the live
        teacher needs for the samples the cache lacks."""
        live = self.live.loader_needs(student) if self.live is not None else LoaderNeeds()
        return LoaderNeeds(specs=live.specs, tokenizers=live.tokenizers, views=self.cache.views(),
                           batch_extras=self.stored_rows)

    def __call__(self, batch: dict) -> Embeddings:
        stored = batch.get(self.stored_rows.key) or self.stored_rows.gather(batch["key"], batch["view_index"])
        missing, image, text, extras = (stored[k] for k in ("missing", "image", "text", "extras"))
        if missing.any():
            if self.live is None:
                first = batch["key"][int(missing.nonzero()[0])]
                raise UserError(f"{int(missing.sum())} samples of this batch are not in the teacher cache "
                                f"{self.cache.directory} (first: '{first}'): build the cache over this dataset, or "
                                f"set teacher.cache_mode=hybrid to embed them live")
            self._embed_live(batch, missing, image, text, extras)
        bias = self.cache.logit_bias
        return Embeddings(image=image.to(self.device), text=text.to(self.device),
                          logit_scale=self.cache.logit_scale.to(self.device), normalized=True,
                          extras={k: v.to(self.device) for k, v in extras.items()},
                          logit_bias=bias.to(self.device) if bias is not None else None)

    def _embed_live(self, batch: dict, missing: torch.Tensor, image, text, extras) -> None:
        keys = (self.live.keys.image, self.live.keys.text)
        live = self.live({key: batch[key][missing] for key in keys})
        image[missing], text[missing] = live.image.cpu(), live.text.cpu()  # normalized by the teacher
        # A live row's pseudo-label: its nearest stored centroid (what CID clustering assigns), if any.
        for name, extra in self.cache.extras.items():
            if "centroids" in extra:
                labels = (F.normalize(live.image.cpu(), dim=-1) @ extra["centroids"].float().T).argmax(dim=1)
                extras[name][missing] = labels.to(extras[name].dtype)


class MergedExtras:
    """Several teachers' ``batch_extras`` run one after the other on a collated batch (their keys differ)."""

    def __init__(self, extras: list[Callable[[dict], dict]]):
        self.extras = extras

    def __call__(self, batch: dict) -> dict:
        return {key: value for extra in self.extras for key, value in extra(batch).items()}


class EnsembleTargets:
    """All of a run's teachers behind the one interface the loop knows; a run with one teacher has one member.

    Each member is a single-teacher targets object (live, cached or hybrid, mixed at will) with its own
    batch keys (:class:`BatchKeys`): the loader renders the one sampled crop in every teacher's ImageSpec
    and tokenizes the captions with every teacher's tokenizer. Cached members replay stored views, so
    they must hold the same keys and the same views (checked at construction:
    :func:`clipdistill.cache.training.refuse_unshared_views`); a live member then sees the replayed crop
    too. A batch's targets are a :class:`~clipdistill.ensemble.TeacherEnsemble` whose members carry their
    ``temperature`` as ``logit_scale`` (None: the teacher's own) and whose weights are normalized.

    Args:
        members: single-teacher targets objects, built with ``BatchKeys.of_member(k)``.
        weights: each teacher's share (> 0). temperatures: each teacher's softmax scale, or None.
    """

    def __init__(self, members: list, weights: list[float], temperatures: list[float | None]):
        if not members or not len(members) == len(weights) == len(temperatures):
            raise ValueError("an ensemble needs at least one teacher, and one weight and temperature per teacher")
        self.members, self.weights, self.temperatures = list(members), list(weights), list(temperatures)
        caches = [(k, m.cache) for k, m in enumerate(self.members) if getattr(m, "cache", None) is not None]
        if len(caches) > 1:
            from clipdistill.cache.training import refuse_unshared_views

            refuse_unshared_views(caches)

    @property
    def dims(self) -> list[int]:
        """Each teacher's embedding width."""
        return [m.dim for m in self.members]

    @property
    def teacher(self):
        """The live teacher of a one-teacher run (fidelity metrics), else None."""
        return getattr(self.members[0], "teacher", None) if len(self.members) == 1 else None

    def loader_needs(self, student) -> LoaderNeeds:
        needs = [m.loader_needs(student) for m in self.members]
        extras = [n.batch_extras for n in needs if n.batch_extras is not None]
        return LoaderNeeds(specs={k: v for n in needs for k, v in n.specs.items()},
                           tokenizers={k: v for n in needs for k, v in n.tokenizers.items()},
                           views=next((n.views for n in needs if n.views is not None), None),
                           batch_extras=MergedExtras(extras) if extras else None)

    def __call__(self, batch: dict) -> TeacherEnsemble:
        members = [self._with_temperature(m(batch), t) for m, t in zip(self.members, self.temperatures)]
        return TeacherEnsemble.weighted(members, self.weights)

    @staticmethod
    def _with_temperature(embeddings: Embeddings, temperature: float | None) -> Embeddings:
        if temperature is None:
            return embeddings
        scale = torch.as_tensor(float(temperature), device=embeddings.image.device)
        return embeddings.with_(logit_scale=scale)
