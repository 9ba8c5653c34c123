"""How 2+ processes train one model: a copy per process kept in step by DDP, or parameters,
gradients and optimizer state sharded by FSDP2, one unit per transformer block.

`parallelize` returns the module the loop trains through; the LanguageModel itself is what the
loop evaluates and checkpoints (FSDP2 shards it in place, so both are the same object then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from graft.config import TrainConfig
from graft.device import autocast_for
from graft.distributed import World
from graft.model.transformer import LanguageModel


def parallelize(
    model: LanguageModel, train: TrainConfig, world: World, device: torch.device
) -> nn.Module:
    """The module the loop calls: the model itself for one process, DDP or FSDP2 for more."""
    if world.size == 1:
        return model
    if train.parallel == "ddp":
        config = model.config
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # No buffer needs syncing before each forward (RoPE tables follow from the config):
            # evaluation then needs no collective, and a rank may run it alone.
            forward_sync_buffers=False,
            # Encoders and classifiers carry heads an objective may not use (mlm leaves the
            # pooler and NSP head idle); DDP must then look for them each step. Decoder LMs use
            # every parameter and skip that search.
            find_unused_parameters=config.head != "lm" or config.is_encoder,
            gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy
        )
    # bf16 compute with fp32 gradient reduction where training runs in bf16; fp32 elsewhere.
    bf16 = autocast_for(device, train.precision) is not None
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    for block in model.model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)  # the rest: embeddings, final norm, heads
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """DDP all-reduces gradients only on a step's last micro-batch; before it, they accumulate
    locally. FSDP2 reduce-scatters every micro-batch, which keeps its gradients sharded."""
    if enabled or not isinstance(module, DistributedDataParallel):
        yield
        return
    with module.no_sync():
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm to max_norm (skipped when 0); the norm before clipping,
    over every shard (nan when skipped)."""
    if max_norm <= 0:
        return float("nan")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm.item())
