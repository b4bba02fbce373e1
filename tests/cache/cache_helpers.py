"""Constants and helpers of the cache tests (importable by name: conftest modules are not)."""
from clipdistill.cache import write_cache

NUM_SAMPLES = 20
SHARD_SIZE = 8  # 3 shards: 8 + 8 + 4
DATASET_INFO = {"kind": "synthetic", "path": "", "num_samples": NUM_SAMPLES, "seed": 3}


def make_cache(directory, dataset, teacher, **overrides):
    kwargs = dict(dataset_info=DATASET_INFO, views=2, shard_size=SHARD_SIZE, batch_size=4, progress=False)
    kwargs.update(overrides)
    return write_cache(dataset, teacher, directory, **kwargs)


def memory_bytes(field: str) -> int:
    """A field of /proc/self/status in bytes: ``VmRSS`` (all resident pages) or ``RssAnon`` (private ones)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
