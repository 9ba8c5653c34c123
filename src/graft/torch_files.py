"""Reading torch's own files (a Hugging Face pytorch_model.bin, a checkpoint's optimizer.pt):
pickles, read with weights_only=True so that loading never runs code from one, and any file
that cannot be read, or that asks to run code, refused in one line naming it.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from graft.errors import CheckpointError, first_line

# torch's weights-only unpickler names the callable a pickle asked for ("Unsupported global:
# GLOBAL __main__.Evil ...", "Trying to load unsupported GLOBAL posix.system ..."): the file
# tried to run code.
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# Any other refusal of the weights-only unpickler (an opcode it does not run, such as a newer
# protocol's frames): only the full unpickler, which can run code, would read the file.
_WHY_UNSAFE = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
# What torch.load raises for a file it cannot read: a cut zip (RuntimeError), a damaged pickle
# (UnpicklingError, EOFError and, from inside the pickle stream, the rest).
_UNREADABLE = (
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    UnicodeDecodeError,
)


def load_torch_file(path: Path) -> object:
    """What `path` holds, read on the CPU without running code (tensors, numbers, strings and
    the containers torch allows). CheckpointError when it is damaged or tries to run code."""
    try:
        with warnings.catch_warnings():
            # A file pickled with another protocol is read or refused below, either way.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        raise _refusal(path, err) from None


def _refusal(path: Path, err: BaseException) -> CheckpointError:
    # torch's message for a refused pickle advises weights_only=False, which would run whatever
    # the file holds: that advice must not reach the user.
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and (wanted := _GLOBAL.search(text)):
        return CheckpointError(
            f"{path}: refused: the file tries to run code when loaded (pickle global "
            f"{wanted.group(1)}); load only weights from sources you trust, as safetensors"
        )
    if isinstance(err, pickle.UnpicklingError) and (why := _WHY_UNSAFE.search(text)):
        return CheckpointError(
            f"{path}: refused: only a loader that can run code would read it "
            f"({why.group(1).strip()}); load only weights from sources you trust, as safetensors"
        )
    # torch's messages run to several sentences of advice; the first says what was wrong.
    reason = first_line(err).split(". ")[0].rstrip(".")
    kind = type(err).__name__
    return CheckpointError(
        f"{path}: not a readable torch file ({f'{kind}: {reason}' if str(err) else kind}); "
        "the file is damaged or of another kind"
    )
