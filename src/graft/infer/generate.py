"""Token-in, token-out generation: greedy or sampled (temperature, top-k, top-p), with a KV cache.

The generator yields token ids one at a time, so a caller can stream them; it knows nothing about
text. With the cache, the prompt is run once (prefill) and each new token costs one position;
without it, the whole sequence is re-run every step. Both paths draw random numbers in the same
order from the same seeded generator, so they produce the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from graft.infer.kv_cache import KVCache
from graft.model.transformer import LanguageModel


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    seed: int | None = None
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: LanguageModel, prompt_ids: Sequence[int], params: SamplingParams, *, use_cache: bool = True
) -> Iterator[int]:
    """Yield up to max_new_tokens new ids after the prompt; stops after yielding a stop id, or when
    the model's context is full."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    device = next(model.parameters()).device
    max_len = model.config.max_seq_len
    if len(prompt_ids) >= max_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {max_len}")
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    tokens = torch.tensor([list(prompt_ids)], device=device)
    budget = min(params.max_new_tokens, max_len - len(prompt_ids))
    cache = None
    if use_cache:
        cache = KVCache(model.config, 1, len(prompt_ids) + budget, device=device,
                        dtype=next(model.parameters()).dtype)
    step_input = tokens
    for _ in range(budget):
        logits = model(step_input if use_cache else tokens, kv_cache=cache, last_only=True)[:, -1]
        next_id = sample_next(logits, params, generator)
        yield int(next_id)
        if int(next_id) in params.stop_ids:
            return
        step_input = next_id.view(1, 1)
        tokens = torch.cat([tokens, step_input], dim=1)
