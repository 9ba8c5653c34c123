"""Resuming a run and holding its folder: what a training command checks before it goes on
from `checkpoints/last` (the same tokenizer, model config, global batch, seed and split) and the
lock that keeps a second process out. The checkpoint format itself is `graft.checkpoint`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from graft.atomic_files import recover_folder
from graft.checkpoint import (
    RUN_CONFIG_FILE,
    TOKENIZER_FILE,
    config_differences,
    read_model_config,
    read_saved_section,
    saved_checkpoint,
    verify_checkpoint,
)
from graft.config import DataConfig, RunConfig, TrainConfig
from graft.data.tokenizer import Tokenizer
from graft.distributed import World
from graft.errors import CheckpointError, ConfigError, TokenizerError
from graft.model.config import ModelConfig
from graft.run_files import CHECKPOINTS_DIR

# What decides which records a fine-tune holds out and trains on: the split is made again at a
# resume, so another value would move records between training and validation unseen.
_SPLIT_SETTINGS = ("val_file", "val_fraction", "max_train_examples")


def _setting(value: object) -> object:
    """A setting as compared across a resume: a path by the file it names (`val.tsv` and its
    absolute spelling are one file)."""
    return Path(value).resolve() if isinstance(value, Path) else value


def check_same_step(last: Path, config: RunConfig) -> None:
    """Refuse to resume with another global batch, seed or split: every step would draw other
    data, or former validation records would be trained on and the validation curve would join
    two sets (a resume on another number of processes keeps the global batch with
    train.global_batch)."""
    train = config.train
    was = read_saved_section(last, "train", TrainConfig)
    before = was.global_batch or was.batch_size * was.grad_accum
    if train.global_batch != before:
        raise ConfigError(
            f"--resume: {last / RUN_CONFIG_FILE} trained with {before} sequences per step, "
            "this run would take "
            f"{train.global_batch}; set --train.global_batch={before} (grad_accum follows "
            "from it and the number of processes)"
        )
    saved = read_saved_section(last, "data", DataConfig)
    changed = [f"train.seed {was.seed} -> {train.seed}"] if was.seed != train.seed else []
    changed += [
        f"data.{key} {getattr(saved, key)} -> {getattr(config.data, key)}"
        for key in _SPLIT_SETTINGS
        if _setting(getattr(saved, key)) != _setting(getattr(config.data, key))
    ]
    if changed:
        raise ConfigError(
            f"--resume: {'; '.join(changed)} from {last / RUN_CONFIG_FILE}: the run would go "
            "on with other data drawn or held out; resume with the saved values or train into "
            "a new train.out_dir"
        )


class RunLock:
    """This process's hold on a run folder while it trains: a second graft process training into
    it is refused. Two would mix their checkpoints and metrics, and the second's start-up
    clearing would delete the first's half-written checkpoint. The hold is an flock on the
    folder itself (no file is made, so a refused run leaves nothing), taken before anything in
    the folder is touched when it exists, else as soon as the run makes it; the system drops it
    when the process ends, however it ends. Rank 0 holds it for every process of a job."""

    def __init__(self, run_dir: Path, world: World) -> None:
        self.run_dir, self.world = Path(run_dir), world
        self._fd: int | None = None

    def take(self) -> None:
        """Hold the folder, if it exists and is not held yet."""
        if self._fd is not None or not self.world.is_main or not self.run_dir.is_dir():
            return
        import fcntl

        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{self.run_dir}: another graft process is training into it; wait for it to "
                "end or choose another train.out_dir"
            ) from None
        self._fd = fd

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def recover_run(run_dir: Path, say: Callable[[str], None]) -> None:
    """Clear what interrupted saves of the run in `run_dir` left, saying what was done:
    unfinished temporary directories are deleted, and a checkpoint's previous version is put
    back where a save was cut between its two renames. Called by the process that saves, before
    anything reads the checkpoints."""
    # checkpoints/ holds only what atomic_directory writes; the run directory (a path the user
    # chose) only has its temporary files cleared, never a `.NAME.old` folder renamed.
    for folder, swaps in ((run_dir, False), (run_dir / CHECKPOINTS_DIR, True)):
        for done in recover_folder(folder, swaps=swaps):
            say(f"notice: {folder}: {done}")


def resume_point(run_dir: Path, *, resume: bool, say: Callable[[str], None] = print) -> Path | None:
    """The verified checkpoints/last of the run in `run_dir` when resuming; None for a fresh run,
    which must not overwrite a run already there (call `recover_run` first).

    A run that never completed a save has nothing to lose: it starts afresh, with or without
    --resume, saying so, instead of being stuck between "already holds a run" and "no such
    checkpoint". So does one killed while it set up, before its folder was made: a job that is
    restarted with --resume after every kill must not be refused then.
    """
    checkpoints = run_dir / CHECKPOINTS_DIR
    last = saved_checkpoint(run_dir)
    if last is None:
        if resume and not run_dir.is_dir():
            say(f"notice: --resume: {run_dir} does not exist (nothing saved); starting at step 0")
        elif resume or checkpoints.exists():
            say(
                f"notice: {run_dir} holds no complete checkpoint (the run stopped before its "
                "first save); starting it from step 0"
            )
        return None
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds a run; "
            "pass --resume to continue it, or set another train.out_dir"
        )
    verify_checkpoint(last)
    return last


def check_resumable(
    last: Path, model: ModelConfig, tokenizer: Tokenizer, *, tokenizer_source: str, fix: str
) -> None:
    """Refuse to resume `last` with another tokenizer or model config: its weights and optimizer
    moments only mean something for the ones it was trained with. `tokenizer_source` says where
    the run's tokenizer came from ("DIR was prepared with"), `fix` how to get the right one."""
    trained_with = Tokenizer.load(last / TOKENIZER_FILE)
    if trained_with.encoding_sha256 != tokenizer.encoding_sha256:
        raise TokenizerError(
            f"--resume: {tokenizer_source} tokenizer {tokenizer.sha256[:12]} "
            f"but {last} was trained with {trained_with.sha256[:12]} "
            f"({last / TOKENIZER_FILE}); "
            f"{fix} or train into a new train.out_dir"
        )
    changed = config_differences(read_model_config(last), model)
    if changed:
        raise CheckpointError(
            f"--resume: the model config differs from {last}: {'; '.join(changed)}; "
            "resume with the original config or train into a new train.out_dir"
        )
