"""What machine a benchmark ran on, and how much other processes used it meanwhile: every bench
script prints both beside its figures (a ratio measured on a busy machine says so)."""

from __future__ import annotations

import contextlib
import os
import platform
import time


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux; nan elsewhere)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """From its creation on: the CPU cores that processes other than this one used on average."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = (
            time.perf_counter(),
            _busy_cpu_seconds(),
            _own_cpu_seconds(),
        )

    def cores(self) -> float:
        others = (_busy_cpu_seconds() - self.busy) - (_own_cpu_seconds() - self.own)
        return max(others, 0.0) / (time.perf_counter() - self.wall)
