"""manifest.json is replaced whole or not at all."""
import errno
import json
import os

import pytest

from clipdistill.cache import manifest as manifest_lib
from clipdistill.errors import UserError


def test_full_disk_keeps_the_previous_manifest_and_names_it(tmp_path, monkeypatch):
    manifest_lib.write_manifest(tmp_path, {"count": 1})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"could not write .*manifest.json: No space left on device"):
        manifest_lib.write_manifest(tmp_path, {"count": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"count": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left behind
