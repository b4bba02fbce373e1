"""Writing a file so that a kill or a full disk leaves the previous version or the new one, never half.

    write_atomic(out / "results.json", lambda f: f.write(text.encode()))
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from clipdistill.errors import UserError


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], what: str = "",
                 per_process: bool = False) -> Path:
    """Call ``write(file)`` on ``PATH.tmp``, then rename it over ``path``.

    Readers (and a rerun after a kill) see either the old file or the whole new one; a stale ``.tmp``
    is never read. A failure (``ENOSPC``, say) removes the temporary file and raises one line naming
    ``path`` (after ``what``, e.g. "checkpoint", when given). ``per_process`` names the temporary file
    after this process, for a file that several ranks may write at once.
    """
    path = Path(path)
    # Host and pid: ranks on different machines of a shared file system can have the same pid.
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp" if per_process
                         else path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            # On disk before the rename: otherwise a machine crash can leave a renamed but empty file.
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise UserError(f"could not write {what + ' ' if what else ''}{path}: {err.strerror or err}") from None
    except BaseException:  # a failing serializer, Ctrl-C: no temporary file left behind either
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(tmp: Path) -> None:
    # On a read-only or vanished location the cleanup fails the same way the write did; its error
    # must not replace the one line that says what could not be written.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def ensure_writable_dir(directory: str | Path, what: str = "output directory") -> Path:
    """Prove that ``directory`` can be created (if missing) and written, before any long work.

    Nothing is left behind: a missing directory is not created here (a command refused later leaves no
    empty folder); the check writes in its nearest existing ancestor instead. Raises one line naming
    the directory (after ``what``) otherwise.
    """
    directory = Path(directory)
    try:
        _probe(directory)
    except OSError as err:
        raise UserError(f"cannot write to {what} {directory}: {err.strerror or err}") from None
    return directory


def ensure_writable_file(path: str | Path, what: str = "output") -> Path:
    """Create the folder of an output file (which need not exist yet) and prove a file can be written there."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a directory, give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _probe(path.parent)
    except OSError as err:
        raise UserError(f"cannot write {what} {path}: {err.strerror or err}") from None
    return path


def _probe(directory: Path) -> None:
    """Write and remove a small file in ``directory`` or, while it does not exist, in its nearest existing
    ancestor. Only a real write answers for a read-only mount, a full disk or a missing permission
    (``os.access`` does not: root passes it even on a read-only mount)."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():  # e.g. out/ under a regular file: nothing can ever be created there
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-") as file:
        file.write(b"x")
        file.flush()


def write_text_atomic(path: str | Path, text: str, what: str = "", per_process: bool = False) -> Path:
    """:func:`write_atomic` for UTF-8 text (JSON, markdown, CSV)."""
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")), what=what, per_process=per_process)
