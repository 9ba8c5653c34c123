"""Choosing the next token from last-position logits, and the log-probabilities reported with it.

Order of processing (each step works on what the previous one left):

1. penalties on the raw logits: repetition (CTRL / Hugging Face: tokens in prompt + output), then
   frequency and presence (OpenAI: generated tokens only);
2. temperature; 0 means greedy, which takes the argmax of the penalised logits and skips 3-6 (so
   does any temperature below GREEDY_BELOW: dividing by it would overflow the logits to inf);
3. top-k;  4. top-p;  5. min-p;
6. sample from the softmax of what is left.

Log-probabilities are log_softmax of the logits after step 2 and before truncation (3-5). Truncation
sets most logits to -inf and renormalises the rest, so alternatives would read -inf and the
chosen token's value would move with every cutting knob; OpenAI likewise reports the model's
distribution rather than the truncated one. Greedy has no temperature to divide by, so it reports
the penalised distribution at temperature 1.

With every new field at its default, the operations (and the random numbers drawn) are exactly
those of the sampler before penalties and min-p existed, so seeded outputs do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20  # OpenAI's cap on top_logprobs
MAX_ABS_PENALTY = 2.0  # OpenAI's range for frequency and presence penalties
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (vLLM's rule): logits / 1e-300 is inf
REPETITION_PENALTY_RANGE = (0.01, 100.0)  # beyond it the divided or multiplied logits overflow
# Seeds are 0..MAX_SEED here and in the server's schema. torch takes -2**63..2**64-1 (negatives
# alias large seeds) and raises OverflowError beyond; this range is one seed per generator state
# and fits the signed 64-bit integers of typed clients. OpenAI leaves the range open.
MAX_SEED = 2**63 - 1
# `graft generate` and `graft chat` sample a little sharper than the model unless told otherwise.
DEFAULT_TEMPERATURE = 0.8


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    seed: int | None = None
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    min_p: float | None = None  # keep tokens whose probability is >= min_p * the top probability
    repetition_penalty: float = 1.0  # > 1 discourages any token already in prompt or output
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurs in the output at all
    logprobs: int | None = None  # report the chosen token's logprob and this many top alternatives

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        # Written so that NaN fails too: every comparison with NaN is False.
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        # `not low < x <= high` holds for NaN and infinities: the range checks refuse them.
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 < self.min_p <= 1:
            raise ValueError(f"min_p must be in (0, 1], got {self.min_p}")
        low, high = REPETITION_PENALTY_RANGE
        if not (math.isfinite(self.repetition_penalty) and low <= self.repetition_penalty <= high):
            raise ValueError(
                f"repetition_penalty must be in [{low:g}, {high:g}], got {self.repetition_penalty}"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -MAX_ABS_PENALTY <= value <= MAX_ABS_PENALTY:
                raise ValueError(
                    f"{name} must be in [-{MAX_ABS_PENALTY:g}, {MAX_ABS_PENALTY:g}], got {value}"
                )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            # Here rather than at manual_seed, which fails mid-generation with an OverflowError.
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


@dataclass
class TokenHistory:
    """What the penalties need to know about each row's tokens so far, as (B, V) tensors updated
    in place, so a step costs O(V) however long the sequence has grown."""

    # bool: the token occurs in the prompt or the output (repetition penalty)
    in_context: torch.Tensor
    output_counts: torch.Tensor  # float32: times the token was generated (frequency/presence)

    @classmethod
    def from_prompts(
        cls,
        prompts: Sequence[Sequence[int]],
        vocab_size: int,
        *,
        device: torch.device | str = "cpu",
    ) -> TokenHistory:
        in_context = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
        for row, ids in enumerate(prompts):
            in_context[row, torch.tensor(list(ids), dtype=torch.long, device=device)] = True
        output_counts = torch.zeros(len(prompts), vocab_size, dtype=torch.float32, device=device)
        return cls(in_context, output_counts)

    def add(self, next_ids: torch.Tensor) -> None:
        """Record one generated token per row, next_ids (B,)."""
        rows = torch.arange(next_ids.shape[0], device=next_ids.device)
        self.output_counts[rows, next_ids] += 1
        self.in_context[rows, next_ids] = True


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, history: TokenHistory | None
) -> torch.Tensor:
    """Logits (B, V) with the repetition, frequency and presence penalties applied; the input
    itself when every penalty is at its default (so defaults cost nothing and change nothing)."""
    if not params.has_penalties:
        return logits
    if history is None:
        raise ValueError("repetition, frequency and presence penalties need the token history")
    # torch.where and arithmetic build new tensors: the caller's logits are never changed in place.
    logits = logits.float()
    if params.repetition_penalty != 1.0:
        # Dividing a negative logit would raise it, i.e. reward the repeat; so negatives are
        # multiplied.
        penalised = torch.where(
            logits < 0, logits * params.repetition_penalty, logits / params.repetition_penalty
        )
        logits = torch.where(history.in_context, penalised, logits)
    if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        counts = history.output_counts
        logits = logits - (
            params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
        )
    return logits


def truncate(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tempered logits (B, V) with the tokens that top-k, then top-p, then min-p drop set
    to -inf."""
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop_sorted[..., 0] = False  # even for a top_p that float32 rounds to 0
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if params.min_p is not None:
        # top-k and top-p always keep the most likely token, so the ratio to it is the same
        # whether measured before or after them.
        probs = logits.softmax(dim=-1)
        threshold = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


@dataclass(frozen=True)
class Choice:
    ids: torch.Tensor  # (B,) chosen token ids
    # (B, V) the reported distribution; None unless params.logprobs is set
    logprobs: torch.Tensor | None


def choose_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    history: TokenHistory | None = None,
) -> Choice:
    """Next token ids from last-position logits (B, V), in the order the module docstring gives."""
    logits = apply_penalties(logits, params, history)
    if params.temperature < GREEDY_BELOW:
        logprobs = logits.float().log_softmax(dim=-1) if params.logprobs is not None else None
        return Choice(logits.argmax(dim=-1), logprobs)
    logits = logits.float() / params.temperature
    logprobs = logits.log_softmax(dim=-1) if params.logprobs is not None else None
    probs = truncate(logits, params).softmax(dim=-1)
    return Choice(torch.multinomial(probs, 1, generator=generator).squeeze(-1), logprobs)


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    history: TokenHistory | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    return choose_next(logits, params, generator, history).ids


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (id, logprob) pairs of one row (V,), most likely first."""
    if n == 0:
        return []
    values, ids = torch.topk(logprobs, min(n, logprobs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist(), strict=True))
