"""The fault-injection suite (tests/faults/): kill -9, full disks, damaged files, hostile input
and a server under load, each on tiny models and bounded in time.

A test counts what it tried and what held with the `tally` fixture; the counts of the whole run
are printed at its end, one line per fault class, for example
`kill -9 trials: 40, resumed: 40, bitwise identical: 40, temp dirs left: 0`.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

FAULTS = Path(__file__).resolve().parent

# fault class -> outcome -> count, in the order first seen
TALLIES: dict[str, Counter[str]] = {}


@pytest.fixture
def tally() -> Callable[[str, str, int], None]:
    """`tally(fault_class, outcome, n=1)`: count `n` more of an outcome ("trials", "resumed"...)."""

    def count(fault_class: str, outcome: str, n: int = 1) -> None:
        TALLIES.setdefault(fault_class, Counter())[outcome] += n

    return count


class Graft(Protocol):
    def __call__(
        self, argv: list[str], log: Path, *, kill_at: str | None = None, fsize: int | None = None
    ) -> int: ...


@pytest.fixture(scope="session")
def graft() -> Iterator[Graft]:
    """`graft(ARGV, LOG, kill_at=, fsize=)` runs `graft ARGV` in a fork of a warm server
    (kill_child.py), its output in LOG: killed by SIGKILL at crash point `kill_at` ("NAME:N"),
    and with `fsize` no file it writes may grow past that many bytes (RLIMIT_FSIZE, a full disk
    that needs no mount). Returns its exit code, -9 when killed."""
    server = subprocess.Popen(
        [sys.executable, str(FAULTS / "kill_child.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    requests, answers = server.stdin, server.stdout

    def run(
        argv: list[str], log: Path, *, kill_at: str | None = None, fsize: int | None = None
    ) -> int:
        request = {"argv": argv, "kill_at": kill_at, "fsize": fsize, "log": str(log)}
        requests.write(json.dumps(request) + "\n")
        requests.flush()
        ready, _, _ = select.select([answers], [], [], 120)
        if not ready:
            server.kill()
            pytest.fail(f"graft {' '.join(argv[:2])} hung; its output:\n{log.read_text()}")
        return int(json.loads(answers.readline())["code"])

    yield run
    requests.close()
    server.wait(timeout=30)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault injection")
    for fault_class, counts in TALLIES.items():
        outcomes = ", ".join(f"{outcome}: {n}" for outcome, n in counts.items())
        terminalreporter.write_line(f"{fault_class} {outcomes}")
