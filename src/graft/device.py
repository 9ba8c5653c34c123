"""Which device a command uses, read by training, evaluation, generation and serving alike, and
training's autocast precision (evaluation and serving compute in float32)."""

from __future__ import annotations

import contextlib
import functools
import time

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


# Dense bf16 tensor-core peaks from the vendors' data sheets, FLOP/s, by a name fragment of
# torch.cuda.get_device_name(). A GPU not listed gets no MFU (its FLOP/s are still logged).
GPU_BF16_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is slower (756e12): named first below
    "A100": 312e12,
    "L40S": 362e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The peak MFU is measured against: on CUDA the bf16 peak of a listed GPU, on a CPU the fp32
    matmul rate measured now (once per process), None elsewhere."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name and "PCIe" in name:
            return 756e12
        return next((peak for key, peak in GPU_BF16_PEAKS.items() if key in name), None)
    if device.type == "cpu":
        return _cpu_matmul_peak()
    return None


@functools.cache
def _cpu_matmul_peak(n: int = 1024, repeats: int = 3) -> float:
    """The best of a few fp32 n x n matmuls, in FLOP/s (about 0.1 s on 2 cores)."""
    # Its own generator: the global one drives dropout, and a run must draw the same dropout
    # masks whether or not this process measured the peak before (a resume does it again).
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
