"""Where a run's metric rows go besides metrics.jsonl (train.log): TensorBoard event files and
Weights & Biases in offline mode. MetricsLog (graft.train.metrics_log) is what the loop writes
to; it hands every row to each backend opened here.

Both packages are optional: a run that names one that is not installed stops before its first
step with a ConfigError, not in the middle of training.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from graft.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/events.out.tfevents.*

# The package each backend imports, and what to tell a user who lacks it.
_NEEDS = {
    "tensorboard": ("tensorboard", "pip install 'graft[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
}


class LogBackend(Protocol):
    def write(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def check_installed(names: Sequence[str]) -> None:
    """Refuse a backend whose package is missing. Every process checks, so that all of them stop
    together rather than rank 0 alone."""
    for name in names:
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][0]) is None:
            raise ConfigError(f"train.log: {name} is not installed; {_NEEDS[name][1]}, or drop it")


def open_backends(
    names: Sequence[str], run_dir: Path, *, resume_from_step: int | None
) -> list[LogBackend]:
    """The backends `names` asks for besides jsonl (which MetricsLog writes itself); call
    check_installed first."""
    backends: list[LogBackend] = []
    if "tensorboard" in names:
        backends.append(TensorBoardLog(run_dir / TENSORBOARD_DIR, resume_from_step))
    if "wandb" in names:
        backends.append(WandbLog(run_dir))
    return backends


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a row (booleans and anything else left out): the full values, not the
    six decimals metrics.jsonl keeps, so a small learning rate keeps its digits."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


class TensorBoardLog:
    """Scalars in TensorBoard event files under RUN_DIR/tensorboard/, flushed with every row as
    metrics.jsonl is."""

    def __init__(self, log_dir: Path, resume_from_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if resume_from_step is None and log_dir.is_dir():
            # A fresh run in an old run directory: the old curves would be drawn over the new.
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # On resume the event file of the interrupted run stays; its points past the resumed
        # step describe steps trained again, and purge_step tells TensorBoard's reader to drop
        # them, as MetricsLog drops those lines of metrics.jsonl.
        self._writer = SummaryWriter(
            str(log_dir), purge_step=None if resume_from_step is None else resume_from_step + 1
        )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in _scalars(metrics).items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbLog:
    """A Weights & Biases run in offline mode: written under RUN_DIR/wandb/offline-run-*, never
    sent anywhere (`wandb sync` uploads it, if the user wants). A resumed run is a new offline run
    whose steps go on from the resumed one."""

    def __init__(self, run_dir: Path) -> None:
        import wandb

        # init's own arguments win over WANDB_MODE and the like, so no setting turns it online.
        self._run = wandb.init(mode="offline", dir=str(run_dir), project="graft", name=run_dir.name)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self._run.finish()
