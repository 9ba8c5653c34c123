"""Leakage audits of a trained language model: canaries, their exposure, and an empirical lower
bound on epsilon from one training run.

This module owns the arithmetic of two audits and the one way they score text:

- Exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019). A canary is a fixed template
  holding a random secret drawn from a space R (six digits: |R| = 10^6). After training, a canary's
  exposure is log2 |R| - log2 rank, the rank being that of its true secret among all |R| candidates
  ordered by the model's likelihood (1 = most likely). `exposure` estimates the rank from a
  random sample of candidates and, beside it, from a skew-normal fitted to the sampled scores (the
  paper's extrapolation), which reaches past the sample's resolution of about log2(sample size).
- One-run auditing (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023). m audit canaries each go into training with probability 1/2; after training the
  auditor guesses "member" for the k lowest-loss ones and "non-member" for the k highest-loss ones;
  `one_run_bound` turns the number of right guesses into an epsilon that the training run cannot
  satisfy, at confidence 1 - beta, for the run's delta (see `p_value`).

Scores are the summed negative log-likelihood (nats) of a conversation's reply tokens, the tokens
instruction tuning trains on: each conversation is encoded by `graft.data.chat.encode_conversation`
and read through `graft.model.transformer.read_padded`, exactly as the `instruct` objective builds
and scores its batches, so the audit scores what was trained on. Everything random takes a seed.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from graft.data.chat import encode_conversation
from graft.data.inputs import right_padded
from graft.data.records import IGNORE_INDEX, Conversation, Message
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, DataError
from graft.model.transformer import LanguageModel, read_padded

__all__ = [
    "Canary",
    "Exposure",
    "Guesses",
    "OneRunBound",
    "SecretTemplate",
    "candidate_secrets",
    "conversation",
    "epsilon_lower_bound",
    "exposure",
    "make_canaries",
    "one_run_bound",
    "p_value",
    "reply_nll",
]


@dataclass(frozen=True)
class SecretTemplate:
    """A canary's text: `text` with `{tag}` (what tells canaries apart, so each secret is learnt
    after its own prefix) and `{secret}` (`length` symbols of `alphabet`)."""

    text: str
    alphabet: str = string.digits
    length: int = 6

    def __post_init__(self) -> None:
        if "{secret}" not in self.text or not self.text.endswith("{secret}"):
            # The secret last: every candidate then shares the prefix the model reads before it.
            raise ConfigError(f"canary template {self.text!r}: it must end with {{secret}}")
        if self.length < 1 or len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ConfigError(
                f"canary template {self.text!r}: give a secret length >= 1 and an alphabet of "
                "distinct symbols"
            )

    @property
    def space(self) -> int:
        """|R|: how many secrets there are."""
        return len(self.alphabet) ** self.length

    def secret(self, index: int) -> str:
        """The secret numbered `index` in [0, space): its symbols in base len(alphabet)."""
        base, symbols = len(self.alphabet), []
        for _ in range(self.length):
            index, digit = divmod(index, base)
            symbols.append(self.alphabet[digit])
        return "".join(reversed(symbols))

    def index(self, secret: str) -> int:
        """The number of `secret` (the inverse of `secret`)."""
        value = 0
        for symbol in secret:
            value = value * len(self.alphabet) + self.alphabet.index(symbol)
        return value

    def fill(self, tag: str, secret: str) -> str:
        return self.text.replace("{tag}", tag).replace("{secret}", secret)


@dataclass(frozen=True)
class Canary:
    tag: str
    secret: str
    text: str  # the template filled with both


def make_canaries(template: SecretTemplate, count: int, seed: int) -> list[Canary]:
    """`count` canaries with distinct random tags (five lowercase letters) and distinct random
    secrets, the same for the same seed and template."""
    if count > template.space:
        raise ConfigError(
            f"{count} canaries need {count} distinct secrets; the template has {template.space}"
        )
    rng = random.Random(f"{seed}/{template.text}")  # a string seed hashes alike in every process
    secrets = [template.secret(i) for i in rng.sample(range(template.space), count)]
    tags: list[str] = []
    while len(tags) < count:
        tag = "".join(rng.choices(string.ascii_lowercase, k=5))
        if tag not in tags:
            tags.append(tag)
    return [Canary(tag, secret, template.fill(tag, secret)) for tag, secret in zip(tags, secrets)]


def candidate_secrets(
    template: SecretTemplate, secret: str, samples: int, seed: int
) -> tuple[list[str], bool]:
    """Other secrets to rank `secret` against, and whether they are all of them: every other
    secret when `samples` reaches |R| - 1, else `samples` drawn at random without replacement."""
    others = template.space - 1
    if samples >= others:
        true = template.index(secret)
        return [template.secret(i) for i in range(template.space) if i != true], True
    rng = random.Random(f"{seed}/{template.text}/{secret}")
    true = template.index(secret)
    # Drawn from the |R| - 1 others: numbers from the true one's upwards shift by one.
    drawn = rng.sample(range(others), samples)
    return [template.secret(i + (i >= true)) for i in drawn], False


def conversation(instruction: str, reply: str, source: str) -> Conversation:
    """A one-turn conversation: the user's instruction, the assistant's reply."""
    return Conversation((Message("user", instruction), Message("assistant", reply)), source)


@torch.inference_mode()
def reply_nll(
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: str,
    conversations: Sequence[Conversation],
    *,
    max_len: int,
    batch_size: int = 32,
) -> list[float]:
    """The summed negative log-likelihood (nats) of each conversation's trained tokens: encoded
    with the chat `template` and cut to `max_len` + 1 tokens as the `instruct` objective does
    (inputs are the sequence without its last token, targets the sequence shifted by one). A
    conversation cut short is refused: its score would miss part of its reply."""
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        inputs, targets = [], []
        for item in conversations[start : start + batch_size]:
            encoded = encode_conversation(tokenizer, template, item, max_len=max_len + 1)
            if encoded.truncated:
                raise DataError(
                    f"{item.source}: {len(tokenizer.encode(item.messages[-1].content))}-token "
                    f"reply does not fit in the training context of {max_len} tokens with its "
                    "prompt; raise train.seq_len or shorten the instruction"
                )
            inputs.append(encoded.input_ids[:-1])
            targets.append(encoded.labels[1:])
        out, _ = read_padded(model, inputs, ["lm"])
        assert out.logits is not None
        wanted, _ = right_padded(targets, IGNORE_INDEX)
        wanted = wanted.to(out.logits.device)
        scored = wanted != IGNORE_INDEX
        log_probs = out.logits.float().log_softmax(dim=-1)
        picked = log_probs.gather(-1, wanted.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        scores += (-(picked * scored).sum(dim=1)).tolist()
    return scores


@dataclass(frozen=True)
class Exposure:
    """A canary's exposure in bits, estimated from its secret's score among candidates' scores."""

    sampled: float  # log2 |R| - log2 of the rank estimated from the candidates
    # the same from a skew-normal fitted to the candidates' scores; None if they do not vary
    extrapolated: float | None
    rank: float  # the estimated rank among all |R| secrets (1: the most likely)
    beaten_by: int  # candidates scored strictly lower (more likely) than the secret
    candidates: int
    exhaustive: bool  # the candidates were every other secret: the rank is exact
    # No sampled candidate beat the secret: `sampled` is the sample's resolution, about
    # log2(candidates), a floor of the exposure; `extrapolated` reaches past it.
    capped: bool


def exposure(secret_nll: float, candidate_nlls: Sequence[float], space: int) -> Exposure:
    """The exposure of a secret scored `secret_nll`, given the scores of other secrets of the same
    template (all |R| - 1 of them, or a uniform sample) in a space of `space` = |R| secrets.

    The rank is 1 + (|R| - 1) * p, with p the share of candidates scored lower (ties count half):
    exact when the candidates are all the others. When none of a sample beats the secret, p is
    taken as 1 / (candidates), the smallest share the sample can resolve, and `capped` is set.
    The extrapolation replaces p by the fitted skew-normal's CDF at `secret_nll` (Carlini et al.
    fit the candidates' log-perplexities the same way), computed in logs so tiny tails survive.
    """
    scores = np.asarray(candidate_nlls, dtype=np.float64)
    n = len(scores)
    if n == 0 or n > space - 1:
        raise ConfigError(f"exposure needs 1 to |R| - 1 = {space - 1} candidate scores, got {n}")
    exhaustive = n == space - 1
    beaten_by = int((scores < secret_nll).sum())
    share = (beaten_by + 0.5 * int((scores == secret_nll).sum())) / n
    capped = share == 0 and not exhaustive
    if capped:
        share = 1 / n
    rank = 1 + (space - 1) * share
    log2_space = math.log2(space)
    return Exposure(
        sampled=log2_space - math.log2(rank),
        extrapolated=_extrapolated(secret_nll, scores, space),
        rank=rank,
        beaten_by=beaten_by,
        candidates=n,
        exhaustive=exhaustive,
        capped=capped,
    )


def _extrapolated(secret_nll: float, scores: np.ndarray, space: int) -> float | None:
    if len(scores) < 3 or float(scores.std()) == 0.0:
        return None  # a skew-normal has three parameters, and a spread
    try:
        shape, loc, scale = stats.skewnorm.fit(scores)
    except (ValueError, RuntimeError, FloatingPointError):
        return None  # no fit, no extrapolation: the sampled estimate stands alone
    log_share = float(stats.skewnorm.logcdf(secret_nll, shape, loc, scale))
    # log2(1 + (|R| - 1) * cdf), from log(cdf): the far tail stays finite down to exp(-745).
    log_rank = float(np.logaddexp(0.0, log_share + math.log(space - 1)))
    return math.log2(space) - log_rank / math.log(2)


# -- one-run auditing --------------------------------------------------------------------------


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """An upper bound on P[W >= v] for an (epsilon, delta)-DP training run audited as in
    Steinke, Nasr and Jagielski (2023): m canaries each included with probability 1/2, r guesses,
    W of them right.

    Their approximate-DP theorem: with f(v) = P[Binomial(r, q) >= v], q = e^eps / (1 + e^eps)
    (the accuracy of eps-DP randomized response),
        P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,
    where f(v - i) - f(v) = P[v - i <= Binomial(r, q) < v]. With delta = 0 this is the pure-DP
    statement that W is stochastically dominated by Binomial(r, q).
    """
    if not 0 <= v <= r <= m or epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(
            f"one-run audit: need 0 <= v <= r <= m, epsilon >= 0 and 0 <= delta <= 1 "
            f"(got m={m}, r={r}, v={v}, epsilon={epsilon}, delta={delta})"
        )
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v-i <= B < v], i=1..v
    worst = float((below / np.arange(1, v + 1)).max())
    return min(tail + 2 * m * delta * worst, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest epsilon (to 1e-6) at which `p_value` is still below `beta`: with probability at
    least 1 - beta over the random inclusion of the canaries, the run is not (epsilon', delta)-DP
    for any epsilon' up to it. 0 when even epsilon = 0 is not rejected (no evidence of leakage)."""
    if not 0 < beta < 1:
        raise ConfigError(f"beta must be between 0 and 1 (exclusive), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:  # p -> 1 as epsilon grows, since q -> 1
        low, high = high, 2 * high
    # Bisection keeping p(low) < beta: every epsilon with p < beta is rejected, whatever p does
    # elsewhere, and rejecting (epsilon, delta) rejects every smaller epsilon too.
    while high - low > 1e-6:
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class Guesses:
    """One choice of how many guesses to make: k "member" and k "non-member"."""

    k: int
    guesses: int  # r = 2k
    correct: int  # W
    epsilon: float  # the lower bound these guesses give at the corrected confidence


@dataclass(frozen=True)
class OneRunBound:
    """The best of `grid`, at confidence 1 - beta overall (each entry at 1 - beta / len(grid))."""

    epsilon: float
    k: int
    guesses: int
    correct: int
    canaries: int  # m
    members: int  # how many of them were in training
    delta: float
    beta: float
    grid: tuple[Guesses, ...]


def default_ks(m: int) -> tuple[int, ...]:
    """k = 5%, 10%, 15%, 25%, 37.5% and 50% of m: from few confident guesses to guessing all."""
    return tuple(sorted({max(1, round(f * m)) for f in (0.05, 0.1, 0.15, 0.25, 0.375, 0.5)}))


def one_run_bound(
    scores: Sequence[float],
    members: Sequence[bool],
    *,
    delta: float,
    beta: float = 0.05,
    ks: Sequence[int] | None = None,
) -> OneRunBound:
    """The one-run epsilon lower bound from the audit canaries' `scores` (lower: more likely a
    member, as a loss is) and whether each was in training.

    For each k in `ks`, the k lowest scores are guessed members and the k highest non-members
    (k+ = k-, r = 2k, the rest abstained on), W counts the right guesses and `epsilon_lower_bound`
    turns (m, r, W) into a bound. Choosing the best k after looking is a choice among len(ks)
    tests, so each is made at beta / len(ks) (Bonferroni): the reported best then holds at 1 - beta
    as a whole.
    """
    m = len(scores)
    if m != len(members) or m < 2:
        raise ConfigError(
            f"one-run audit: need as many membership flags as scores (at least 2), "
            f"got {m} scores and {len(members)} flags"
        )
    ks = tuple(ks) if ks is not None else default_ks(m)
    if not ks or any(k < 1 or 2 * k > m for k in ks):
        raise ConfigError(f"one-run audit: each k must be between 1 and m / 2 = {m // 2}, got {ks}")
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    truth = np.asarray(members, dtype=bool)[order]
    grid = []
    for k in ks:
        correct = int(truth[:k].sum() + (~truth[m - k :]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, beta / len(ks))
        grid.append(Guesses(k, 2 * k, correct, bound))
    best = max(grid, key=lambda g: (g.epsilon, g.correct / g.guesses))
    return OneRunBound(
        epsilon=best.epsilon,
        k=best.k,
        guesses=best.guesses,
        correct=best.correct,
        canaries=m,
        members=int(truth.sum()),
        delta=delta,
        beta=beta,
        grid=tuple(grid),
    )
