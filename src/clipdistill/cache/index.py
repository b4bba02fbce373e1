"""``index.npz``: sample key -> row of the cache, for lookups by the keys a training batch carries.

Rows number the samples in shard order (shard 0's rows first). The file holds the keys sorted
(fixed-width unicode, no pickle) and each key's row, so a batch of keys is found with one
``np.searchsorted``; no Python dict of millions of strings is built.

The index is memory-mapped, not read: at 12-character keys it is 56 bytes a sample (560 MB for
10 M samples), and every process that opens the cache (each torchrun rank, each spawned DataLoader
worker) would otherwise hold its own copy; mapped, a node holds one, in the page cache.
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np

from clipdistill.atomic import write_atomic
from clipdistill.errors import UserError

INDEX = "index.npz"


def write_index(directory: str | Path, keys_per_shard: list[list[str]]) -> int:
    """Index the shards' keys (in shard order); returns the sample count. Duplicate keys are refused."""
    keys = np.array([key for shard in keys_per_shard for key in shard], dtype=str)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    duplicate = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if duplicate.size:
        raise UserError(f"sample key '{sorted_keys[duplicate[0]]}' occurs more than once in the data; "
                        f"a cache needs unique keys")
    arrays = {"keys": sorted_keys, "rows": order.astype(np.int64)}
    if not _holds(Path(directory) / INDEX, arrays):
        write_atomic(Path(directory) / INDEX, lambda file: _save_aligned_npz(file, arrays), per_process=True)
    return int(keys.size)


def _holds(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    # A rerun of a finished cache leaves its index file alone: replacing it under a training job that
    # maps it is harmless on a local disk but can fault that job's mapping on a network file system.
    try:
        existing = _map_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile, UserError):
        return False
    return existing.keys() == arrays.keys() and all(np.array_equal(existing[k], arrays[k]) for k in arrays)


class KeyIndex:
    """Sorted keys and their rows; :meth:`rows` looks up many keys at once (-1 for an absent key)."""

    def __init__(self, sorted_keys: np.ndarray, rows: np.ndarray):
        self.sorted_keys, self.sorted_rows = sorted_keys, rows

    @classmethod
    def load(cls, directory: str | Path) -> "KeyIndex":
        path = Path(directory) / INDEX
        if not path.is_file():
            raise UserError(f"teacher cache {directory} has no {INDEX}: it is incomplete; re-run clipdistill cache")
        arrays = _map_npz(path)
        return cls(arrays["keys"], arrays["rows"])

    def __len__(self) -> int:
        return int(self.sorted_keys.size)

    def rows(self, keys: list[str]) -> np.ndarray:
        if not len(self):
            return np.full(len(keys), -1, dtype=np.int64)
        query = np.asarray(keys, dtype=str)
        position = np.minimum(np.searchsorted(self.sorted_keys, query), len(self) - 1)
        found = self.sorted_keys[position] == query
        return np.where(found, self.sorted_rows[position], -1)

    def row(self, key: str) -> int:
        """One key's row (-1 if absent), by a scalar search: the loader asks this for every sample it reads."""
        if not len(self):
            return -1
        position = min(int(np.searchsorted(self.sorted_keys, key)), len(self) - 1)
        return int(self.sorted_rows[position]) if self.sorted_keys[position] == key else -1


_ALIGN = 64  # as .npy headers pad to; any dtype's alignment divides it
_PADDING_FIELD = 0xD935  # the zip extra-field id zipalign uses for the same purpose


def _save_aligned_npz(file, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` whose members' data start at multiples of 64 bytes of the file, so they can be mapped.

    ``np.savez`` puts each ``.npy`` right after its zip header, at an arbitrary offset; numpy copies an
    unaligned ``<U`` or int64 map whole when it searches it. A padding extra field in each local
    header moves the data onto the boundary; zip and npz readers skip the field.
    """
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # The local header: 30 bytes, the name, our field (4 + n bytes), the zip64 field (20, forced).
            before_data = file.tell() + 30 + len(info.filename) + 4 + 20 + len(header.getvalue())
            padding = -before_data % _ALIGN
            info.extra = struct.pack("<HH", _PADDING_FIELD, padding) + bytes(padding)
            with archive.open(info, "w", force_zip64=True) as member:
                member.write(header.getvalue())
                flat = array.reshape(-1)
                for begin in range(0, flat.size, 1 << 20):  # in slices: no second copy of a large index
                    member.write(flat[begin:begin + (1 << 20)].tobytes())


def _map_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, memory-mapped where stored uncompressed and aligned.

    ``np.load`` reads ``.npz`` members into memory whatever its ``mmap_mode``; an uncompressed member
    is a plain ``.npy`` at a known offset of the zip file, so it can be mapped from there. Indexes of
    older caches (``np.savez``, unaligned) and compressed ones are read as before.
    """
    arrays = {}
    # One open file for the directory, the headers and the maps: a rename over ``path`` meanwhile
    # cannot pair one version's offsets with another's bytes.
    with open(path, "rb") as file, zipfile.ZipFile(file) as archive:
        for member in archive.infolist():
            mapped = _map_member(file, member) if member.compress_type == zipfile.ZIP_STORED else None
            arrays[member.filename.removesuffix(".npy")] = (
                mapped if mapped is not None else np.load(archive.open(member), allow_pickle=False))
    return arrays


def _map_member(file, member: zipfile.ZipInfo) -> np.ndarray | None:
    """The stored ``.npy`` member mapped, or None where its data is not aligned for its dtype."""
    file.seek(member.header_offset + 26)  # the local header's name and extra-field lengths
    name_length, extra_length = struct.unpack("<HH", file.read(4))
    file.seek(member.header_offset + 30 + name_length + extra_length)
    version = np.lib.format.read_magic(file)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(file)
    if dtype.hasobject:
        raise UserError(f"{file.name}: member {member.filename} holds Python objects; rebuild the cache")
    if int(np.prod(shape)) == 0:  # an empty map is an error
        return np.empty(shape, dtype=dtype)
    if file.tell() % dtype.alignment:  # written by np.savez (before this version)
        return None
    return np.memmap(file, dtype=dtype, mode="r", offset=file.tell(), shape=shape, order="F" if fortran_order else "C")
