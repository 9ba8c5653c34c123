"""A preallocated key/value cache for incremental decoding.

Memory for every layer's keys and values is taken once, for the longest sequence the caller
will need, so decoding never reallocates or concatenates. The transformer calls `update` in each
layer and `advance` once per forward pass.
"""

from __future__ import annotations

import torch

from graft.model.config import ModelConfig


class KVCache:
    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int,
        *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model's max_seq_len {config.max_seq_len}")
        shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.head_dim)  # (L, B, K, S, D)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled so far, the same in every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, K, T, D) after the past ones; return the past plus them."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
