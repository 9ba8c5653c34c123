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


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def rss_mb() -> float:
    """This process's resident set now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, else KiB
