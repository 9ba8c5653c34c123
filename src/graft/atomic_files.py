"""Durable, all-or-nothing file writes: every output graft writes goes through here.

A file is written beside its destination under a temporary name, flushed and fsynced, then
renamed over the destination (a rename is atomic on POSIX and Windows), and the folder entry is
fsynced so the rename itself survives a power cut. A reader sees the old file or the new one,
never half of either; an interrupted write leaves at most a hidden temporary file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk; a no-op where the platform refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some platforms cannot fsync a directory
    finally:
        os.close(fd)


def temporary_sibling(path: Path) -> Path:
    # A unique name opened with "x" rather than mkstemp: mkstemp's 0600 mode would survive
    # the rename, while "x" honours the umask like any other file we write.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with temp.open("xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path
