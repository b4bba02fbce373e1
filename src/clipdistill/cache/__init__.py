"""Teacher-embedding cache: run the teacher once, train from stored embeddings and replayable views.

    clipdistill cache configs/smoke.yaml --out runs/cache          # write (resumable, torchrun-aware)
    clipdistill train configs/smoke.yaml --out runs/x teacher.source=cache teacher.path=runs/cache

Layout of a cache directory: ``manifest.json`` (:mod:`~clipdistill.cache.manifest`), ``index.npz``
(:mod:`~clipdistill.cache.index`), ``shard_NNNNNN.safetensors`` or ``.npz``
(:mod:`~clipdistill.cache.storage`), optional ``extras/`` (:mod:`~clipdistill.cache.extras`).
"""
from clipdistill.cache.extras import write_extra
from clipdistill.cache.manifest import read_manifest, weights_fingerprint
from clipdistill.cache.reader import CachedViews, TeacherCache
from clipdistill.cache.training import open_for_training
from clipdistill.cache.writer import finalize, write_cache, write_shards

__all__ = ["CachedViews", "TeacherCache", "finalize", "open_for_training", "read_manifest",
           "weights_fingerprint", "write_cache", "write_extra", "write_shards"]
