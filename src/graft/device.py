"""Which device a run uses and at what precision: one place for the choice, read by training,
evaluation, generation and serving alike."""

from __future__ import annotations

import contextlib

import torch

from graft.errors import ConfigError


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{what}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: {name!r} requested but this torch build has no CUDA device")
    return device


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager | None:
    """bf16 autocast on CUDA by default; fp32 elsewhere (bf16 is 7-100x slower on common CPUs)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return None
