"""What every training command does around its own setup: `pretrain` and `finetune` differ in
where their model and objective come from, and in nothing else.

`train_command` checks the config, starts the process group and holds the run folder while the
command's own `prepare` builds the run and `fit` trains it. `prepare` calls `open_run_folder`
(the checkpoint to resume from, once an interrupted save is put back) and, with its model and
objective built, `assemble_run` (devices, parallelism, optimizer, resumed state, privacy, and the
run folder written only then: a refused run leaves none behind).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import torch

from graft import checkpoint as ckpt
from graft import distributed
from graft.atomic_files import check_output, write_atomic
from graft.config import RunConfig, command_problems, unused_settings
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Objective
from graft.run_files import CONFIG_FILE
from graft.train.loop import Run, RunResult, fit
from graft.train.optim import build_optimizer
from graft.train.parallel import parallelize
from graft.train.privacy import make_private
from graft.train.resume import RunLock, recover_run, resume_point

Say = Callable[[str], None]


class Prepare(Protocol):
    """A command's setup: the `Run` for `config` (resolved), on `device` in `world`."""

    def __call__(
        self,
        config: RunConfig,
        resume: bool,
        world: distributed.World,
        device: torch.device,
        say: Say,
        lock: RunLock,
    ) -> Run: ...


def train_command(
    config: RunConfig,
    command: Literal["pretrain", "finetune"],
    prepare: Prepare,
    *,
    resume: bool,
    echo: Say | None,
) -> RunResult:
    """Check `config` for `command`, set the run up with `prepare` and train it. Notices go to
    `echo` (standard error without one), the loop's lines to `echo` (standard output)."""
    # A config built in Python gets the checks the CLI's loading makes too.
    problems = command_problems(config.objective.name, command) or unused_settings(config, command)
    if problems:
        raise ConfigError("; ".join(problems))
    config = ckpt.resolve(config, resume=resume)  # a no-op when the CLI resolved it already
    world, device = distributed.start(config.train)
    try:
        with RunLock(config.train.out_dir, world) as lock:
            say = (echo or _notice) if world.is_main else _quiet
            return fit(prepare(config, resume, world, device, say, lock), echo)
    finally:
        distributed.stop()


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def _quiet(message: str) -> None:
    """What the ranks after 0 say: nothing (rank 0 speaks for the run)."""


def open_run_folder(
    config: RunConfig, resume: bool, world: distributed.World, say: Say, lock: RunLock
) -> Path | None:
    """Take the run folder and give the checkpoint to resume from (None: a fresh run). An `--out`
    that is a file is refused here, before the command loads or builds anything large."""
    run_dir = config.train.out_dir
    check_output(run_dir, folder=True)
    lock.take()  # before anything in the folder is touched
    if world.is_main:
        recover_run(run_dir, say)
    world.barrier()  # no rank looks for the checkpoint before it is put back
    return resume_point(run_dir, resume=resume, say=say)


def assemble_run(
    config: RunConfig,
    model: LanguageModel,
    objective: Objective,
    tokenizer: Tokenizer,
    *,
    last: Path | None,
    world: distributed.World,
    device: torch.device,
    say: Say,
    lock: RunLock,
) -> Run:
    """The `Run` of `model` (its weights set: fresh, initial or resumed) training on `objective`:
    on its device and sharded or wrapped for `world`, with its optimizer, the data generator and
    the training state (`last`'s when resuming), under DP-SGD when `config.dp` asks. Only then,
    past every check, is the run folder made and its config.yaml written."""
    model.to(device).train()
    model.checkpoint_activations(config.train.activation_checkpointing)
    module = parallelize(model, config.train, world, device)
    if world.size > 1:
        torch.manual_seed(config.train.seed + world.rank)  # dropout differs from rank to rank
    optimizer = build_optimizer(model, config.optim, device)
    generator = torch.Generator().manual_seed(config.train.seed)  # the same data on every rank
    state = ckpt.TrainingState()
    if last is not None:
        state = ckpt.restore_training_state(last, model, optimizer, generator, device, world.rank)
        say(f"resuming {config.train.out_dir} at step {state.step}")
    privacy = None
    if config.dp.enabled:
        privacy = make_private(config, model, optimizer, objective, world, last, say)
        optimizer, module = privacy.optimizer, privacy.module
    if world.is_main:
        config.train.out_dir.mkdir(parents=True, exist_ok=True)
        lock.take()  # a new folder: held from now on, before anything is written in it
        write_atomic(config.train.out_dir / CONFIG_FILE, config.to_yaml())
    return Run(
        config,
        model,
        objective,
        optimizer,
        tokenizer,
        device,
        generator,
        state,
        resumed=last is not None,
        world=world,
        module=None if module is model else module,
        privacy=privacy,
    )
