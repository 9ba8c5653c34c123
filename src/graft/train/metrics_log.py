"""What a run writes as it goes: metrics.jsonl (one JSON object a line; its name and its reader
live in graft.run_files, for readers outside train), the same rows to the backends train.log
names (graft.train.log_backends), and the loss-curve PNG."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.atomic_files import write_atomic
from graft.run_files import METRICS_FILE, read_metrics
from graft.train.log_backends import LogBackend, check_installed, open_backends

__all__ = ["LOSS_CURVE_FILE", "METRICS_FILE", "MetricsLog", "plot_loss_curve", "read_metrics"]

LOSS_CURVE_FILE = "loss_curve.png"


class MetricsLog:
    """Appends `{"step": N, "train/loss": ..., ...}` lines, flushed at once so a crash loses
    none, and hands each row to the other backends of `backends` (train.log; jsonl is always
    written)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        resume_from_step: int | None = None,
        writes: bool = True,
        backends: Sequence[str] = (),
    ) -> None:
        """`writes` False: a log that writes nothing (the ranks after 0 of a distributed run)."""
        self.path = run_dir / METRICS_FILE
        self._file = None
        self._backends: list[LogBackend] = []
        check_installed(backends)  # on every rank, so that all of them stop together
        if not writes:
            return
        if resume_from_step is not None and self.path.exists():
            # Lines past the resumed checkpoint describe steps that will be trained again.
            kept = [line for line in self.read() if line["step"] <= resume_from_step]
            write_atomic(self.path, "".join(json.dumps(line) + "\n" for line in kept))
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._backends = open_backends(backends, run_dir, resume_from_step=resume_from_step)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        clean = {
            k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in metrics.items()
        }
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        for backend in self._backends:
            backend.write(step, metrics)

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for backend in self._backends:
            backend.close()


def plot_loss_curve(metrics: list[dict[str, Any]], out: Path, title: str = "") -> Path | None:
    """Train and validation loss against step, written atomically as a PNG."""
    train = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
    val = [(m["step"], m["val/loss"]) for m in metrics if "val/loss" in m]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe in worker threads
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    return write_atomic(out, image.getvalue())
