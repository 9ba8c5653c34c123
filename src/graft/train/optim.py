"""AdamW with decay / no-decay parameter groups, and the learning-rate schedule.

Weight decay applies to matrices (linear weights, embeddings) and never to biases or norm
gains: decaying a gain towards zero fights the normalisation it scales (GPT-2, nanoGPT, LLaMA
all split the groups this way).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graft.adapt import HEAD_PREFIXES
from graft.config import OptimConfig
from graft.errors import ConfigError


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trained parameters; a fine-tune's new head gets its own groups when
    optim.head_lr_scale is not 1 (each group's `lr_scale` multiplies the scheduled LR)."""
    scale = cfg.head_lr_scale
    # (decays, lr_scale) -> parameters: the two body groups always, head groups only when scaled
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():  # each tied parameter once
        if param.requires_grad:
            head = scale != 1 and name.startswith(HEAD_PREFIXES)
            groups.setdefault((param.dim() >= 2, scale if head else 1.0), []).append(param)
    if scale != 1 and len(groups) == 2:
        raise ConfigError(
            "optim.head_lr_scale: this model trains no new head (classifier, pooler); leave it at 1"
        )
    param_groups = [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decays else 0.0,
            "lr_scale": lr_scale,
        }
        for (decays, lr_scale), params in groups.items()
    ]
    return torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        # One fused kernel over all parameters: on CPU the default per-tensor path spends as long
        # in its elementwise ops as a small model's forward pass (bench/train_throughput.py).
        fused=device.type in ("cpu", "cuda"),
    )


def learning_rate(step: int, progress: float, cfg: OptimConfig) -> float:
    """LR for optimizer step `step` (0-based) when `progress` (0..1) of the decay phase is done.

    Linear warm-up over the first warmup_steps, then decay from the peak to min_lr_ratio * peak
    as progress goes from 0 (end of warm-up) to 1 (end of run). Progress, not step, drives the
    decay, so a run limited by tokens or wall-clock time still reaches its minimum at the end.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - floor) * p
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * p))
