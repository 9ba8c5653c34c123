"""Where an export may be written: one rule for both formats, checked before any work.

`graft export` writes a folder (`--format hf`) or one file (`--format gguf`). Either way an
`--out` that already holds something is replaced only with `--overwrite`, and an `--out` of the
other kind (a file where the folder goes, a folder where the file goes) is refused even with it:
replacing it would delete something the user never meant as an export. So is, with it, anything
that does not look like an earlier export (a run, a checkpoint, a folder of runs, a file that is
not GGUF) or that holds the model being exported. The messages speak of the
command's flags because the command is how nearly everyone reaches these writers; the Python
functions take the same choice as `overwrite=`.
"""

from __future__ import annotations

from pathlib import Path

from graft.atomic_files import check_output
from graft.data.shards import INDEX_FILE
from graft.errors import OutputError
from graft.run_files import CONFIG_FILE, EXPLAIN_DIR, METRICS_FILE

__all__ = ["check_export_out"]

# What an export folder holds besides its files: the explain page a checkpoint carries.
_EXPORT_SUBFOLDERS = frozenset({EXPLAIN_DIR})
# Files no export holds: a graft checkpoint's manifest (graft.checkpoint.MANIFEST_FILE, which
# imports this module), a run's, prepared data's.
_NOT_EXPORT_FILES = ("manifest.json", CONFIG_FILE, METRICS_FILE, INDEX_FILE)


def check_export_out(
    out: Path, *, folder: bool, overwrite: bool, source: Path | None = None
) -> None:
    """Refuse `out` as an export destination, in one OutputError line, when it is of the wrong
    kind, already holds something and `overwrite` is off, holds something that is not an earlier
    export, is or holds `source` (the model exported), or lies under a file."""
    out = Path(out)
    if source is not None and out.exists():
        inside = Path(source).resolve()
        if inside == out.resolve() or out.resolve() in inside.parents:
            raise OutputError(
                f"{out}: holds {source}, the model being exported; choose another --out"
            )
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: is a file, not a folder; remove it or choose another --out")
        # An empty folder is a place made ready for the export: nothing in it can be lost.
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                raise OutputError(
                    f"{out}: already exists and is not empty; pass --overwrite to replace it"
                )
            if not _is_export(out):
                raise OutputError(
                    f"{out}: is not an earlier export (it holds other files or folders), so "
                    "--overwrite will not replace it; choose an empty or new --out"
                )
    else:
        if out.is_dir():
            raise OutputError(
                f"{out}: is a folder, not a file; give the path of the file to write as --out"
            )
        if out.exists() and not overwrite:
            raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
        if out.exists() and not _is_gguf(out):
            raise OutputError(
                f"{out}: is not a GGUF file, so --overwrite will not replace it; "
                "choose another --out"
            )
    check_output(out, folder=folder)  # a parent path running through a file


def _is_export(folder: Path) -> bool:
    """A Hugging Face model folder as an export leaves it: a config.json, none of graft's run,
    checkpoint or data files, no subfolder but an explain page."""
    entries = list(folder.iterdir())
    return (
        (folder / "config.json").is_file()
        and not any((folder / name).exists() for name in _NOT_EXPORT_FILES)
        and all(e.name in _EXPORT_SUBFOLDERS for e in entries if e.is_dir())
    )


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False
