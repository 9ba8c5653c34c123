"""Durable, all-or-nothing file writes: every output graft writes goes through here.

A file is written beside its destination under a temporary name, flushed and fsynced, then
renamed over the destination (a rename is atomic on POSIX and Windows), and the folder entry is
fsynced so the rename itself survives a power cut. A reader sees the old file or the new one,
never half of either; an interrupted write leaves at most a hidden temporary file.
Directories (checkpoints, prepared data, exports) are built the same way by `atomic_directory`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Build a directory that replaces `dest` in one step.

    Yields an empty hidden sibling to fill. When the block ends without an error, everything in it
    is fsynced and it takes `dest`'s place: the old version is first moved aside to `.NAME.old`
    and deleted only once the new one is in place, so a crash between the two renames leaves a
    complete copy there (checkpoint loading falls back to it). On an error the partial directory
    is removed and `dest` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and made with mkdir rather than mkdtemp, whose 0700 mode would stick.
    work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.partial"
    work.mkdir()
    try:
        yield work
        for path in sorted(work.rglob("*")):
            fsync_path(path)
        fsync_path(work)
        aside = dest.parent / f".{dest.name}.old"
        if dest.exists():
            # Only now is an older aside copy redundant; if dest is missing (a swap was
            # interrupted), the aside copy is the one complete version and stays until the end.
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(dest, aside)
        try:
            os.rename(work, dest)
        except BaseException:
            if aside.exists() and not dest.exists():
                os.rename(aside, dest)
            raise
        fsync_path(dest.parent)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
