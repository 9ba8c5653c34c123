"""Many processes, one run: the world torchrun describes, its process group, and the few
collectives the training loop needs.

`torchrun --nproc_per_node N -m graft pretrain ...` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
`graft pretrain` sets none of them and is a world of one, in which nothing here communicates.

Every rank draws the whole step's micro-batches from the same seeded generator and trains on its
own share of them (`World.share`). So the data a step sees does not depend on the number of
processes: a run matches one process with the same global batch, and resumes on another number of
processes without its data order changing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from graft.config import TrainConfig
from graft.device import resolve_device
from graft.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what one process would: logs, plots and single-file checkpoints."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous part of a step's micro-batches (len(items) % size == 0)."""
        per_rank = len(items) // self.size
        return list(items[self.rank * per_rank : (self.rank + 1) * per_rank])

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def total(self, value: float) -> float:
        """`value` summed over every rank (a non-finite one on any rank makes it non-finite)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def from_main(self, value: float) -> float:
        """Rank 0's `value` on every rank: the clock behind a time limit and the schedule, which
        every rank must read alike."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


ONE_PROCESS = World()


def world_from_env() -> World:
    """The world torchrun describes in the environment; one process without it."""
    size = _env_int("WORLD_SIZE", "1", least=1)
    if size == 1:
        return ONE_PROCESS
    rank = _env_int("RANK", None, least=0)
    if rank >= size:
        raise ConfigError(f"environment: RANK {rank} is not below WORLD_SIZE {size}")
    return World(rank, size, _env_int("LOCAL_RANK", "0", least=0))


def _env_int(name: str, default: str | None, *, least: int) -> int:
    """An integer torchrun sets (or a user did by hand), checked: one line if it is wrong."""
    value = os.environ.get(name, default)
    if value is None:
        raise ConfigError(
            f"environment: WORLD_SIZE is set but {name} is not; launch with torchrun, which "
            "sets both (or unset WORLD_SIZE for one process)"
        )
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise ConfigError(f"environment: {name}={value!r} is not an integer >= {least}")
    return number


def start(train: TrainConfig) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs) and pick this rank's
    device: cuda:LOCAL_RANK when the run trains on CUDA."""
    world = world_from_env()
    device = resolve_device(train.device)
    if world.size == 1:
        if train.parallel == "fsdp":
            print(
                "notice: train.parallel fsdp on one process trains the whole model; "
                "launch with torchrun --nproc_per_node N to shard it",
                file=sys.stderr,
            )
        return world, device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {world.local_rank}, but this node has {torch.cuda.device_count()} "
                "GPU(s): start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(
            f"train.device: {train.device!r} cannot train with {world.size} processes; "
            "use cuda (NCCL) or cpu (gloo)"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def step_layout(train: TrainConfig, world: World) -> TrainConfig:
    """`train` with grad_accum derived from train.global_batch (sequences per optimizer step over
    every process), or, without one, global_batch derived from batch_size x grad_accum x world
    size. Idempotent: a resolved config resolves to itself."""
    per_round = world.size * train.batch_size
    if train.global_batch is None:
        return train.model_copy(update={"global_batch": per_round * train.grad_accum})
    if train.global_batch % per_round:
        raise ConfigError(
            f"train.global_batch {train.global_batch} is not a multiple of {world.size} "
            f"process(es) x train.batch_size {train.batch_size} = {per_round}; "
            "change one of them"
        )
    accum = train.global_batch // per_round
    if "grad_accum" in train.model_fields_set and train.grad_accum != accum:
        raise ConfigError(
            f"train.grad_accum {train.grad_accum} contradicts train.global_batch "
            f"{train.global_batch} = {world.size} process(es) x train.batch_size "
            f"{train.batch_size} x {accum}; set one of them"
        )
    return train.model_copy(update={"grad_accum": accum})


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
