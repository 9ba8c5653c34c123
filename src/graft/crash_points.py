"""Named places where the fault-injection tests (tests/faults) kill graft with SIGKILL.

With GRAFT_KILL_AT=NAME:N in the environment, the N-th pass through `crash_point(NAME)` kills
the process on the spot, the way `kill -9` or a power cut would, but at a chosen moment: inside
a checkpoint's write window, between its two renames, after a given training step. Timing alone
lands there rarely. Without the variable (always, outside those tests) a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "GRAFT_KILL_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    target = os.environ.get(KILL_AT)
    if target is None:
        return
    where, _, nth = target.rpartition(":")
    if where != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
