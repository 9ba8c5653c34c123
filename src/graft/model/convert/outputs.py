"""Where an export may be written: one rule for both formats, checked before any work.

`graft export` writes a folder (`--format hf`) or one file (`--format gguf`). Either way an
`--out` that already holds something is replaced only with `--overwrite`, and an `--out` of the
other kind (a file where the folder goes, a folder where the file goes) is refused even with it:
replacing it would delete something the user never meant as an export. The messages speak of the
command's flags because the command is how nearly everyone reaches these writers; the Python
functions take the same choice as `overwrite=`.
"""

from __future__ import annotations

from pathlib import Path

from graft.atomic_files import check_output
from graft.errors import OutputError

__all__ = ["check_export_out"]


def check_export_out(out: Path, *, folder: bool, overwrite: bool) -> None:
    """Refuse `out` as an export destination, in one OutputError line, when it is of the wrong
    kind, already holds something and `overwrite` is off, or lies under a file."""
    out = Path(out)
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: is a file, not a folder; remove it or choose another --out")
        # An empty folder is a place made ready for the export: nothing in it can be lost.
        if out.is_dir() and not overwrite and any(out.iterdir()):
            raise OutputError(
                f"{out}: already exists and is not empty; pass --overwrite to replace it"
            )
    else:
        if out.is_dir():
            raise OutputError(
                f"{out}: is a folder, not a file; give the path of the file to write as --out"
            )
        if out.exists() and not overwrite:
            raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
    check_output(out, folder=folder)  # a parent path running through a file
