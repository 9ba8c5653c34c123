"""Weight and gradient norms per part of the model (train.norms_every): each transformer block
(`model.layers.N` -> block.N), the embeddings (`model.embed_*`) and the head (everything after
the last block: the final norm, lm_head and whatever heads the model carries).

Only parameters that train are counted, so a frozen block has no norm and a LoRA block's norm is
its adapters'. A tied output projection is the token embedding and counts there. Under FSDP2
every parameter and gradient is a DTensor sharded over the processes: each sums the squares of
its own shards and one all-reduce adds them up, so every process gets the norms of the whole
model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)embed_")


def part_of(name: str) -> str:
    """block.N, embeddings or head, for a parameter name as the model names it (a wrapper's
    prefix, such as torch.compile's or DDP's, does not matter)."""
    block = _BLOCK.search(name)
    if block is not None:
        return f"block.{block.group(1)}"
    return "embeddings" if _EMBEDDING.search(name) else "head"


@torch.no_grad()
def weight_norms(model: nn.Module) -> dict[str, float]:
    """`norm/weight/PART` of every part with parameters that train."""
    trained = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    return {f"norm/weight/{part}": norm for part, norm in _part_norms(trained).items()}


@torch.no_grad()
def gradient_norms(model: nn.Module) -> dict[str, float]:
    """`norm/grad/PART` of the gradients as they are now: call it after backward and before
    clipping. Parameters without a gradient (an unused head) are left out."""
    grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    return {f"norm/grad/{part}": norm for part, norm in _part_norms(grads).items()}


def _part_norms(tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """The L2 norm of each part's tensors together, parts in model order."""
    tensors = list(tensors)
    if not tensors:
        return {}
    parts = list(dict.fromkeys(part_of(name) for name, _ in tensors))
    index = {part: i for i, part in enumerate(parts)}
    device = _local(tensors[0][1]).device
    own = torch.zeros(len(parts), device=device)  # whole tensors: every process has them all
    shards = torch.zeros(len(parts), device=device)  # this process's shards of DTensors
    group = None
    for name, tensor in tensors:
        square = torch.linalg.vector_norm(_local(tensor), dtype=torch.float32).square()
        if isinstance(tensor, DTensor):
            shards[index[part_of(name)]] += square
            group = tensor.device_mesh.get_group()
        else:
            own[index[part_of(name)]] += square
    if group is not None:
        dist.all_reduce(shards, group=group)
    return dict(zip(parts, (own + shards).sqrt().tolist()))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
