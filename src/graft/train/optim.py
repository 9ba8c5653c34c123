"""AdamW with decay / no-decay parameter groups, and the learning-rate schedule.

Weight decay applies to matrices (linear weights, embeddings) and never to biases or norm
gains: decaying a gain towards zero fights the normalisation it scales (GPT-2, nanoGPT, LLaMA
all split the groups this way).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graft.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():  # each tied parameter once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
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
