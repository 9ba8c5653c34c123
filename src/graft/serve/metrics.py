"""The server's counters, gauges and histograms, written in Prometheus' text exposition format.

Written by hand rather than with prometheus_client: the format is a few lines per metric
(https://prometheus.io/docs/instrumenting/exposition_formats/), and prometheus_client keeps its
metrics in a process-wide registry, so two apps in one process (tests, a benchmark) would share or
clash over them. Here each app owns one `ServeMetrics`. Gauges (queue depth, running requests,
batch size) are read from the engine when scraped rather than stored.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Seconds. Requests on a CPU model take tens of milliseconds to minutes; first tokens come sooner.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    return (
        "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}" if pairs else ""
    )


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class _Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Labels) -> Iterable[str]:
        counts = self.counts or [0] * (len(self.buckets) + 1)
        running = 0
        for bound, n in zip([*self.buckets, math.inf], counts, strict=True):
            running += n
            yield f"{name}_bucket{_labels(labels, (('le', _number(bound)),))} {running}"
        yield f"{name}_sum{_labels(labels)} {_number(self.total)}"
        yield f"{name}_count{_labels(labels)} {self.count}"


@dataclass(frozen=True)
class Gauges:
    """What the engine reports at scrape time."""

    waiting: int
    running: int
    last_batch_size: int


class ServeMetrics:
    """Everything /metrics reports for one app. Safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[Labels, int] = defaultdict(int)
        self._latency: dict[Labels, _Histogram] = {}
        self._ttft: dict[Labels, _Histogram] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """A finished request: its status and its time from arrival to the last byte sent."""
        with self._lock:
            self._requests[(("endpoint", endpoint), ("status", str(status)))] += 1
            key = (("endpoint", endpoint),)
            self._latency.setdefault(key, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_first_token(self, endpoint: str, seconds: float) -> None:
        key = (("endpoint", endpoint),)
        with self._lock:
            self._ttft.setdefault(key, _Histogram(TTFT_BUCKETS)).observe(seconds)

    def add_tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def render(self, gauges: Gauges) -> str:
        """The text exposition format (version 0.0.4)."""
        out: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            out.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        with self._lock:
            header(
                "graft_requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status code.",
            )
            out.extend(
                f"graft_requests_total{_labels(k)} {v}" for k, v in sorted(self._requests.items())
            )
            header(
                "graft_prompt_tokens_total",
                "counter",
                "Tokens read: prompts of finished generations, "
                "embedding and classification inputs.",
            )
            out.append(f"graft_prompt_tokens_total {self.prompt_tokens}")
            header("graft_completion_tokens_total", "counter", "Tokens generated.")
            out.append(f"graft_completion_tokens_total {self.completion_tokens}")
            header(
                "graft_request_duration_seconds",
                "histogram",
                "Time from a request's arrival to its last byte.",
            )
            for key, histogram in sorted(self._latency.items()):
                out.extend(histogram.lines("graft_request_duration_seconds", key))
            header(
                "graft_time_to_first_token_seconds",
                "histogram",
                "Time from a generation request's arrival to its first token.",
            )
            for key, histogram in sorted(self._ttft.items()):
                out.extend(histogram.lines("graft_time_to_first_token_seconds", key))
        header("graft_queue_depth", "gauge", "Requests waiting for a batch slot.")
        out.append(f"graft_queue_depth {gauges.waiting}")
        header("graft_running_requests", "gauge", "Requests in the running batch.")
        out.append(f"graft_running_requests {gauges.running}")
        header("graft_batch_size", "gauge", "Sequences in the engine's last decode step.")
        out.append(f"graft_batch_size {gauges.last_batch_size}")
        return "\n".join(out) + "\n"
