"""Durable, all-or-nothing file writes: every output graft writes goes through here.

A file is written beside its destination under a temporary name, flushed and fsynced, then
renamed over the destination (a rename is atomic on POSIX and Windows), and the folder entry is
fsynced so the rename itself survives a power cut. A reader sees the old file or the new one,
never half of either; an interrupted write leaves at most a hidden temporary file.
Directories (checkpoints, prepared data, exports) are built the same way by `atomic_directory`.
A write refused for space (a full disk, a quota, a file size limit) becomes one OutputError line.
What a crash leaves beside a destination (a hidden `.NAME.<hex>.tmp` or `.partial`) is cleared by
`recover_folder` when the run it belongs to starts again, and beside any other output by the next
write of the same NAME: a writer holds an flock on its temporary file or folder while it writes,
which the system drops when the process dies, so a leftover nobody holds is a dead writer's and a
concurrent writer's is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from graft.crash_points import crash_point
from graft.errors import OutputError

# The errors of a write that found no room: a full disk, a quota, RLIMIT_FSIZE.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Libraries that write in native code report the OS error only in their message
# (safetensors: "I/O error: No space left on device (os error 28)").
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")
# What a write of ours leaves if it dies half-way: `.NAME.<12 hex>.partial` (a directory) or
# `.NAME.<12 hex>.tmp` (a file), and `.NAME.old` when it died between a directory's two renames.
_LEFTOVER = r"\.[^/]+\.[0-9a-f]{12}\.(partial|tmp)"


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


def no_room(err: BaseException) -> str | None:
    """Why a write failed, when it failed for want of space ("No space left on device", "File
    too large"...), looking through the errors it was raised from; None for any other failure."""
    seen: BaseException | None = err
    while seen is not None:
        code = seen.errno if isinstance(seen, OSError) else None
        found = _OS_ERROR_IN_TEXT.search(str(seen)) if code is None else None
        code = int(found.group(1)) if found else code
        if code in NO_ROOM:
            return os.strerror(code)
        seen = seen.__cause__ or seen.__context__
    return None


def _refused_for_room(dest: Path, err: BaseException) -> OutputError | None:
    why = no_room(err)
    if why is None and isinstance(err, OSError) and _device_full(dest):
        # Some writers report a short write without an errno ("4096 requested and 0 written").
        why = os.strerror(errno.ENOSPC)
    if why is None:
        return None
    kept = "the previous version is intact" if dest.exists() else "nothing half-written is left"
    return OutputError(
        f"{dest}: could not be written ({why}); {kept}; free space or raise the limit and rerun"
    )


def _device_full(dest: Path) -> bool:
    """Whether the file system `dest` goes to has no block left for this process."""
    for folder in (dest.parent, *dest.parent.parents):
        if folder.exists():
            try:
                return os.statvfs(folder).f_bavail == 0
            except OSError:
                return False
    return False


def default_mode(*, directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it: put it straight back
    return (0o777 if directory else 0o666) & ~mask


def temporary_sibling(path: Path) -> Path:
    # A unique name opened with "x" rather than mkstemp: mkstemp's 0600 mode would survive
    # the rename, while "x" honours the umask like any other file we write.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def check_output(path: Path, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a folder where a file goes (or
    a file where a folder goes), or a parent path running through a file. One OutputError line
    rather than the OSError a rename would raise after the work is done."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise OutputError(f"{path}: is a folder; a file is expected here")
    if path.exists() and not path.is_dir() and folder:
        raise OutputError(f"{path}: is a file; a folder is expected here")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot be made: {parent} is a file, not a folder")
            break


def _make_parent(path: Path, *, folder: bool = False) -> None:
    check_output(path, folder=folder)
    path.parent.mkdir(parents=True, exist_ok=True)


def _hold(path: Path) -> int:
    """An open descriptor of `path` (a file or a folder) holding an exclusive flock on it:
    BlockingIOError when another process holds one, another OSError where the filesystem has
    no flock. Closing it (or dying) lets go."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _made_and_held(temp: Path, make: Callable[[Path], None]) -> int | None:
    """Make `temp` (with `make`) already held: made under a name no cleaner looks at, flocked,
    then renamed (the inode, and its lock, go with it), so another writer never sees it unheld.
    Where the filesystem has no flock it is made unheld; cleaners cannot tell such leftovers
    from a live writer's (their flock fails too), so they leave them."""
    unseen = temp.with_name(temp.name + ".new")
    make(unseen)
    try:
        held: int | None = _hold(unseen)
    except OSError:
        held = None
    os.rename(unseen, temp)
    return held


def _clear_dead_leftovers(dest: Path) -> None:
    """Delete what killed writes of `dest` left beside it: the temporary files and folders no
    live writer holds (see the module's note). Best effort: a leftover it cannot lock, list or
    delete (another user's, a folder it may not read) is left, and the write goes on."""
    mine = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{12}}\.(partial|tmp)")
    try:
        found = [p for p in dest.parent.iterdir() if mine.fullmatch(p.name)]
    except OSError:
        return
    for path in found:
        try:
            if path.is_symlink():
                continue
            fd = _hold(path)
        except OSError:
            continue  # a live writer's, gone already, or not ours to tell
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write (it exists, empty: open it with "w"),
    fsynced and renamed over `path` when the block ends without an error, deleted otherwise. A
    write that found no room is one OutputError naming `path`. For writers that stream (a
    corpus, a GGUF file, extracted entities); `write_atomic` for data in hand."""
    path = Path(path)
    _make_parent(path)
    _clear_dead_leftovers(path)
    temp = temporary_sibling(path)
    # Made here, exclusively, and held while the block writes: a later writer of `path` that
    # finds it unheld knows its writer died. os.open honours the umask as open() does.
    held = _made_and_held(
        temp, lambda new: os.close(os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    )
    try:
        yield temp
        # Not fsync_path, which lets a folder's refusal pass: a file's fsync failing means its
        # data may not be on disk (a full disk can show only here), so it is the write's error.
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException as err:
        refused = _refused_for_room(path, err)  # first: deleting the file frees the disk
        temp.unlink(missing_ok=True)
        if refused is not None:
            raise refused from err
        raise
    finally:
        if held is not None:
            os.close(held)
    fsync_path(path.parent)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one step."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as temp, temp.open("wb") as handle:
        handle.write(payload)
    return Path(path)


def aside_path(dest: Path) -> Path:
    """Where atomic_directory moves `dest`'s previous version while the new one takes its place:
    the one complete version if a swap is cut between its two renames."""
    return dest.parent / f".{dest.name}.old"


def complete_version(dest: Path) -> Path:
    """What a reader of the directory `dest` reads: `dest`, or its previous version when a swap
    was cut between its two renames (`dest` gone, the aside copy whole)."""
    dest = Path(dest)
    aside = aside_path(dest)
    return aside if not dest.exists() and aside.is_dir() else dest


@contextlib.contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Build a directory that replaces `dest` in one step.

    Yields an empty hidden sibling to fill. When the block ends without an error, everything in it
    is fsynced and it takes `dest`'s place: the old version is first moved aside to `.NAME.old`
    and deleted only once the new one is in place, so a crash between the two renames leaves a
    complete copy there (checkpoint loading falls back to it). On an error the partial directory
    is removed and `dest` is untouched; a failure for want of space is one OutputError line.
    Every file ends with the umask's permissions, as if written with open(): some writers
    (safetensors) create theirs 0600, which would hide weights from a serving account.
    """
    dest = Path(dest)
    _make_parent(dest, folder=True)
    _clear_dead_leftovers(dest)
    # Hidden, unique, and made with mkdir rather than mkdtemp, whose 0700 mode would stick;
    # held while it is filled, as atomic_file holds its file.
    work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.partial"
    held = _made_and_held(work, Path.mkdir)
    try:
        yield work
        file_mode, folder_mode = default_mode(), default_mode(directory=True)
        for path in sorted(work.rglob("*")):
            path.chmod(folder_mode if path.is_dir() else file_mode)
            fsync_path(path)
        fsync_path(work)
        crash_point("atomic_directory:filled")
        aside = aside_path(dest)
        if dest.exists():
            # Only now is an older aside copy redundant; if dest is missing (a swap was
            # interrupted), the aside copy is the one complete version and stays until the end.
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(dest, aside)
            crash_point("atomic_directory:aside")
        try:
            os.rename(work, dest)
        except BaseException:
            if aside.exists() and not dest.exists():
                os.rename(aside, dest)
            raise
        fsync_path(dest.parent)
        crash_point("atomic_directory:swapped")
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        refused = _refused_for_room(dest, err)
        if refused is not None:
            raise refused from err
        raise
    finally:
        if held is not None:
            os.close(held)


def recover_folder(folder: Path, *, swaps: bool = True) -> list[str]:
    """Clear what interrupted writes left in `folder`, and say what was done.

    Unfinished temporary files and directories (`.NAME.<12 hex>.tmp|partial`) are deleted. With
    `swaps`, for a folder whose directories only atomic_directory writes (a run's checkpoints/),
    a `.NAME.old` copy, the previous complete version, is deleted when NAME exists (the swap
    finished) and put back as NAME when it does not (the swap was cut between its two renames).
    Call it before writing there again, from the one process that writes.
    """
    return _recover(Path(folder), swaps=swaps)


def _recover(folder: Path, *, swaps: bool) -> list[str]:
    if not folder.is_dir():
        return []
    done = []
    leftover, old = re.compile(_LEFTOVER), re.compile(r"\.([^/]+)\.old")
    for path in sorted(folder.iterdir()):
        if leftover.fullmatch(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            done.append(f"removed {path.name}, left by an interrupted write")
        elif swaps and (match := old.fullmatch(path.name)) and path.is_dir():
            dest = folder / match.group(1)
            if dest.exists():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name}, an older copy of {dest.name}")
            else:
                os.rename(path, dest)
                fsync_path(folder)
                done.append(f"put back {dest.name} from {path.name} (a save was interrupted)")
    return done
