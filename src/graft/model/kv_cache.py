"""Preallocated key/value caches for incremental decoding.

Memory for every layer's keys and values is taken once, for the longest sequence the caller
will need, so decoding never reallocates or concatenates. The transformer calls `update` in each
layer and `advance` once per forward pass. KVCache holds a batch that moves in lockstep (what
generate() uses); SlotKVCache holds sequences of different lengths that join and leave (what the
continuous-batching engine uses).
"""

from __future__ import annotations

from typing import Protocol

import torch

from graft.model.config import ModelConfig


class CacheView(Protocol):
    """What the transformer needs of a cache in one forward pass: where the past ends, a place
    for each layer's new keys and values, and a step forward. KVCache, SlotPrefill, SlotDecode and
    the engine's compiled decode view are all one."""

    @property
    def length(self) -> int: ...
    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def advance(self, n: int) -> None: ...


class SlotKVCache:
    """Keys and values of up to `slots` sequences of different lengths, for continuous batching.

    Each layer has one preallocated (slots, K, max_len, D) tensor of keys and one of values; each
    slot keeps its own length, so sequences join and leave without touching the others' memory.
    (A tensor per layer rather than one (L, ...) tensor: torch.compile can then write a step's
    keys into a layer's cache in place; a write into a view of one big tensor is traced as a
    rebuild of the whole tensor.) A forward pass sees the cache through a view with the interface
    the transformer expects of KVCache (`length`, `update`, `advance`): `prefill(slot)` for one
    sequence's prompt, `decode(n)` for one new token in each of slots 0..n-1. The engine keeps its
    running sequences in the lowest slots (see `move`), so a decode step attends to a plain slice
    of the cache: nothing is gathered or copied per step.
    """

    def __init__(
        self,
        config: ModelConfig,
        slots: int,
        max_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(
                f"cache length {max_len} exceeds the model's max_seq_len {config.max_seq_len}"
            )
        shape = (slots, config.kv_heads, max_len, config.head_dim)  # (slots, K, S, D)
        # Zeros, not empty: masked positions are still multiplied by a zero weight, and stale
        # memory could hold NaN or inf, which a zero weight does not cancel. Zeroing also commits
        # the memory now, so a server that starts is a server that has room for max_batch sequences.
        layers = range(config.n_layers)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.max_len = max_len
        self.lengths = [0] * slots  # positions filled in each slot

    @property
    def bytes_per_slot(self) -> int:
        """Memory one sequence's slot takes: keys and values of every layer at full length."""
        return 2 * len(self.keys) * self.keys[0][0].numel() * self.keys[0].element_size()

    def prefill(self, slot: int) -> SlotPrefill:
        return SlotPrefill(self, slot)

    def decode(self, n: int) -> SlotDecode:
        return SlotDecode(self, n)

    def move(self, src: int, dst: int) -> None:
        """Give slot src's sequence slot dst (whose own sequence has left); src becomes free. Copies
        only the filled positions, once per departure, instead of gathering slots every step."""
        n = self.lengths[src]
        for tensor in (*self.keys, *self.values):
            tensor[dst, :, :n] = tensor[src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0  # the old contents stay, masked or overwritten by the next owner


class SlotPrefill:
    """Slots slot..slot+n-1 seen as one batch that moves in lockstep: a prompt in one slot is run
    exactly as generate() runs it (positions from 0, SDPA's causal kernel, keys of exactly the
    filled length)."""

    def __init__(self, cache: SlotKVCache, slot: int, n: int = 1) -> None:
        self.cache, self.rows = cache, slice(slot, slot + n)
        self.length = cache.lengths[slot]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (n, K, T, D) after the past ones; return the past plus them."""
        end = self.length + k.shape[2]
        if end > self.cache.max_len:
            raise ValueError(
                f"KV cache full: {end} positions needed, {self.cache.max_len} allocated"
            )
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[self.rows, :, self.length : end] = k
        values[self.rows, :, self.length : end] = v
        return keys[self.rows, :, :end], values[self.rows, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
        for slot in range(self.rows.start, self.rows.stop):
            self.cache.lengths[slot] = self.length


class KVCache(SlotPrefill):
    """A batch that moves in lockstep (what generate() uses): the first rows of its own
    SlotKVCache. `slots` (default batch_size) is how many rows are allocated: `reorder` may grow
    the batch up to it (beam search runs its prompt as one row, then as many as it has beams)."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        slots: int | None = None,
    ) -> None:
        slots = batch_size if slots is None else slots
        if not 1 <= batch_size <= slots:
            raise ValueError(f"batch_size must be in [1, slots={slots}], got {batch_size}")
        cache = SlotKVCache(config, slots, max_len, device=device, dtype=dtype)
        super().__init__(cache, 0, batch_size)

    def reorder(self, index: torch.Tensor) -> None:
        """Make the batch the rows `index` (n,) of the current one: row i becomes a copy of old
        row index[i]. Rows may repeat or be dropped and n may differ from the current batch (up to
        the slots allocated): beam search moves each surviving child onto its parent's past this
        way, one gather per step instead of re-running the sequences."""
        n = index.shape[0]
        slots = len(self.cache.lengths)
        if not 1 <= n <= slots:
            raise ValueError(f"reorder: {n} rows asked for; the cache has {slots} slots")
        for tensor in (*self.cache.keys, *self.cache.values):
            # The right side is gathered into a new tensor before the write, so a row that is
            # overwritten here can still be the source of another.
            tensor[:n, :, : self.length] = tensor[index, :, : self.length]
        self.rows = slice(0, n)
        self.cache.lengths[:n] = [self.length] * n


class SlotDecode:
    """Slots 0..n-1, each adding one token at its own position; a view for one forward pass.

    Pass `position_ids` and `attention_mask` to the model with this view: each row attends to its
    own filled positions within a key span as long as the longest row's. When every row has the
    same length, both are None and the step is exactly a batch of equals: no mask, no gather."""

    def __init__(self, cache: SlotKVCache, n: int) -> None:
        self.cache, self.n = cache, n
        lengths = cache.lengths[:n]
        # The transformer checks length + 1 against max_seq_len: the longest row is the one that
        # matters.
        self.length = max(lengths)
        if self.length >= cache.max_len:
            raise ValueError(
                f"KV cache full: a slot already holds {self.length} of {cache.max_len} positions"
            )
        self.span = self.length + 1  # keys attended to: the longest row's past plus its new token
        self.uniform = min(lengths) == self.length
        self.position_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        if not self.uniform:
            device = cache.keys[0].device
            self.rows = torch.arange(n, device=device)
            self.positions = torch.tensor(lengths, device=device)  # where each row's new token goes
            self.position_ids = self.positions[:, None]  # (n, 1)
            # (n, 1, 1, span): a row sees its own past and its new token, never a shorter row's
            # stale tail.
            keys = torch.arange(self.span, device=device)
            self.attention_mask = (keys[None, :] <= self.positions[:, None])[:, None, None, :]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (slots, K, S, D)
        if self.uniform:
            keys[: self.n, :, self.length : self.span] = k
            values[: self.n, :, self.length : self.span] = v
        else:
            # Advanced indices on slots and positions with the heads between: (n, K, D) targets.
            keys[self.rows, :, self.positions] = k[:, :, 0]
            values[self.rows, :, self.positions] = v[:, :, 0]
        return keys[: self.n, :, : self.span], values[: self.n, :, : self.span]

    def advance(self, n: int) -> None:
        lengths = self.cache.lengths
        for row in range(self.n):
            lengths[row] += n
