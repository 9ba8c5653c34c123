"""Token-in, token-out generation with a KV cache; how each token is chosen lives in sampling.py.

The generator yields tokens one at a time, so a caller can stream them; it knows nothing about
text (stop strings belong to infer/stream.py). With the cache, the prompt is run once (prefill)
and each new token costs one position; without it, the whole sequence is re-run every step. Both
paths draw random numbers in the same order from the same seeded generator and keep the same
penalty history, so they produce the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from graft.infer.sampling import (
    Choice,
    SamplingParams,
    TokenHistory,
    choose_next,
    sample_next,
    top_logprobs,
)
from graft.model.kv_cache import KVCache
from graft.model.transformer import LanguageModel

__all__ = [
    "GeneratedToken",
    "SamplingParams",
    "check_prompt",
    "generate",
    "generate_steps",
    "sample_next",
]


@dataclass(frozen=True)
class GeneratedToken:
    id: int
    # Both from the distribution after penalties and temperature, before top-k/top-p/min-p
    # (see sampling.py for why); None and [] unless SamplingParams.logprobs is set.
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), most likely first

    @classmethod
    def chosen(cls, choice: Choice, params: SamplingParams) -> GeneratedToken:
        """The token of a one-row `choice`, with its logprobs when `params` ask for them."""
        token_id = int(choice.ids[0])
        if choice.logprobs is None or params.logprobs is None:
            return cls(token_id)
        row = choice.logprobs[0]
        return cls(token_id, float(row[token_id]), top_logprobs(row, params.logprobs))


def check_prompt(model: LanguageModel, prompt_ids: Sequence[int]) -> int:
    """The model's context, once `prompt_ids` is known to leave room in it for a new token (the
    one rule of sampling and beam search alike)."""
    config = model.config
    if not config.can_generate:
        raise ValueError(
            f"the model is not a causal language model (head {config.head}, {config.attention} "
            "attention): it cannot generate text"
        )
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    max_len = model.config.max_seq_len
    if len(prompt_ids) >= max_len:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context is {max_len}"
        )
    return max_len


@torch.inference_mode()
def generate_steps(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> Iterator[GeneratedToken]:
    """Yield up to max_new_tokens new tokens after the prompt; stops after yielding a stop id, or
    when the model's context is full."""
    max_len = check_prompt(model, prompt_ids)
    weight = next(model.parameters())
    device = weight.device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    history = None
    if params.has_penalties:
        # A built model always has its vocab_size (Transformer refuses a config without one).
        assert model.config.vocab_size is not None
        history = TokenHistory.from_prompts([prompt_ids], model.config.vocab_size, device=device)
    tokens = torch.tensor([list(prompt_ids)], device=device)
    budget = min(params.max_new_tokens, max_len - len(prompt_ids))
    cache = None
    if use_cache:
        cache = KVCache(
            model.config, 1, len(prompt_ids) + budget, device=device, dtype=weight.dtype
        )
    step_input = tokens
    for _ in range(budget):
        out = model(step_input if use_cache else tokens, kv_cache=cache, last_only=True)
        assert out.logits is not None
        logits = out.logits[:, -1]
        choice = choose_next(logits, params, generator, history)
        token = GeneratedToken.chosen(choice, params)
        yield token
        if token.id in params.stop_ids:
            return
        if history is not None:
            history.add(choice.ids)
        step_input = choice.ids.view(1, 1)
        tokens = torch.cat([tokens, step_input], dim=1)


def generate(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> Iterator[int]:
    """The ids of generate_steps, for callers that need no logprobs."""
    for step in generate_steps(model, prompt_ids, params, use_cache=use_cache):
        yield step.id
