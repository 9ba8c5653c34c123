"""What a killed write leaves beside an output that is not a run (a prepared corpus, an export,
an eval report): the next write of the same output deletes it, unless a live writer holds it.
They stayed, hidden, until deleted by hand: a killed `graft data prepare` of a large corpus
left its whole size behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from graft.atomic_files import atomic_directory, write_atomic

WRITER = """
import sys, time
from pathlib import Path
from graft.atomic_files import atomic_directory, atomic_file

dest, kind = Path(sys.argv[1]), sys.argv[2]
with (atomic_file(dest) if kind == "file" else atomic_directory(dest)) as temp:
    if kind == "file":
        temp.write_text("half")
    else:
        (temp / "part.bin").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(120)
"""


def _writer(dest: Path, kind: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dest), kind], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "writing\n"
    return child


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_killed_writers_leftover_goes_with_the_next_write(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "out"
    child = _writer(dest, kind)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(_hidden(tmp_path)) == 1  # the dead writer's .out.<hex>.tmp|partial
    if kind == "file":
        write_atomic(dest, "whole")
    else:
        with atomic_directory(dest) as work:
            (work / "part.bin").write_bytes(b"whole")
    assert _hidden(tmp_path) == [] and dest.exists()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_live_writers_file_is_left_alone(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "out"
    child = _writer(dest, kind)
    try:
        (leftover,) = _hidden(tmp_path)
        if kind == "file":
            write_atomic(dest, "mine")
        else:
            with atomic_directory(dest) as work:
                (work / "part.bin").write_bytes(b"mine")
        assert _hidden(tmp_path) == [leftover]  # still being written: not ours to delete
    finally:
        child.kill()
        child.wait()
    # Another output's leftovers are never touched.
    other = tmp_path / "other"
    write_atomic(other, "x")
    assert _hidden(tmp_path) == [leftover]


RACER = """
import sys
from pathlib import Path
from graft.atomic_files import write_atomic

dest, failures = Path(sys.argv[1]), 0
for i in range(400):
    try:
        write_atomic(dest, f"{i}\\n")
    except OSError:
        failures += 1
print(failures)
"""


def test_writers_of_one_file_at_once_never_take_each_others_temporary_file(tmp_path: Path) -> None:
    """A writer's temporary file was made, then held: another writer's cleaning could take it in
    between as a dead writer's, and the first write failed. It is now held before it has its
    name."""
    dest = tmp_path / "out.txt"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(dest)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    failures = [int(racer.communicate(timeout=120)[0]) for racer in racers]
    assert failures == [0, 0, 0]
    assert _hidden(tmp_path) == [] and dest.read_text().endswith("\n")
