"""What a run directory holds, for whoever writes it (train) and whoever reads it (insight, the
experiments): the names of its files and how metrics.jsonl is read back.

It sits below every package so that readers of a run never need to import the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.errors import DataError

METRICS_FILE = "metrics.jsonl"  # one JSON object a line: {"step": N, "train/loss": ..., ...}
CONFIG_FILE = "config.yaml"  # the resolved run config, written before the first step
CHECKPOINTS_DIR = "checkpoints"  # last/ and best/
EVAL_DIR = "eval"  # what `graft eval` writes by default
EXPLAIN_DIR = "explain"  # what `graft explain` writes by default; exports carry it


def run_dir_of(path: Path) -> Path | None:
    """The run directory a path names: itself when it holds checkpoints/, RUN for a checkpoint
    at RUN/checkpoints/NAME; None for anything else (a checkpoint copied out of its run, a Hugging
    Face directory)."""
    path = Path(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        return path
    return path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None


def lower_is_better(metric: str) -> bool:
    """train.monitor's direction: losses, perplexities and bits per byte improve downwards,
    accuracies and F1 upwards. The one rule for the loop's best checkpoint, the model card and
    the comparison of runs."""
    return metric.rsplit("/", 1)[-1].endswith(("loss", "ppl", "bpb"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a metrics file, in order; [] when there is no file."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        # A line cut short by a crash mid-write (kill -9, power): no step is whole in it, and
        # a resume trains that step again and writes it anew.
        lines.pop()
    return [_row(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{number}: not a JSON line ({err.msg})") from err
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
    return row
