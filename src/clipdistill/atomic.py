"""Writing a file so that a kill or a full disk leaves the previous version or the new one, never half.

    write_atomic(out / "results.json", lambda f: f.write(text.encode()))
"""
from __future__ import annotations

import os
import socket
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
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {what + ' ' if what else ''}{path}: {err.strerror or err}") from None
    except BaseException:  # a failing serializer, Ctrl-C: no temporary file left behind either
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, what: str = "", per_process: bool = False) -> Path:
    """:func:`write_atomic` for UTF-8 text (JSON, markdown, CSV)."""
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")), what=what, per_process=per_process)
