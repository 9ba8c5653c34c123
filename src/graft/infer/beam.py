"""Beam search: the continuation with the best length-normalised log-probability, searched with
a fixed number of running hypotheses, for translation and summarisation.

Scoring is Hugging Face's BeamSearchScorer: a hypothesis' score is the sum of its new tokens'
log-probabilities (log_softmax of float32 logits) divided by (new tokens, a final stop id
included) ** length_penalty. With length_penalty 1 that is the mean log-probability per token;
above 1 longer outputs are favoured, 0 scores the plain sum (which favours short outputs, since
every token adds a log-probability <= 0), below 0 short outputs are favoured even more.

One step: every running hypothesis is extended by every token (a (running, vocab) table of sums);
the best candidates by sum come from one torch.topk over that table flattened, so among equal
sums the order is topk's (the same on every run on one device, as in Hugging Face). Walking them
best first, a candidate that ends with a stop id becomes a finished hypothesis if it ranks within
the first `beams` candidates (Hugging Face's rule: admitting lower-ranked ones would fill the
finished set at the first step with unlikely stops), and it is not extended; the first `beams`
candidates that do not stop are the next running hypotheses. The best `beams` finished ones are
kept. When the budget (max_new_tokens, or the model's context) is used up, the running hypotheses
compete with the finished ones under the same score.

When to stop before the budget: with `early_stopping` (the default, and what most translation
systems use), as soon as `beams` hypotheses have finished. Without it, only when no running
hypothesis can still beat the worst of `beams` finished ones; that makes stopping early give the
same answer as running to the end. The bound is sound because log-probabilities are <= 0: a
running sum s can only fall. For length_penalty <= 0 a longer hypothesis also divides by a
factor <= 1, so its best is s / (t + 1) ** length_penalty at its next length t + 1; for
length_penalty > 0 a larger divisor brings a negative sum closer to 0, so the only sound bound is
s / budget ** length_penalty, which rarely stops the search: it runs nearly to the end, exactly.

With the KV cache the prompt runs once as a single row (beams are not copies of it), and after
each step the cache's rows are gathered by the chosen parents (`KVCache.reorder`); each step is
one forward pass of all running hypotheses. Without it, every step re-runs the whole sequences:
slower, and a check that the cache changes nothing.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from graft.infer.generate import check_prompt
from graft.model.kv_cache import KVCache
from graft.model.transformer import LanguageModel

__all__ = ["BeamParams", "BeamResult", "beam_search", "best_possible_score"]


@dataclass(frozen=True)
class BeamParams:
    beams: int  # running hypotheses kept at each step; 1 is greedy decoding
    max_new_tokens: int
    length_penalty: float = 1.0  # scores are sum / length ** length_penalty
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    # True: stop once `beams` hypotheses have finished (Hugging Face's early_stopping=True).
    # False: search until nothing running can beat the finished ones (see the module docstring).
    early_stopping: bool = True

    def __post_init__(self) -> None:
        if self.beams < 1:
            raise ValueError(f"beams must be >= 1, got {self.beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if any(i < 0 for i in self.stop_ids):
            raise ValueError(f"stop_ids must be token ids >= 0, got {sorted(self.stop_ids)}")


@dataclass(frozen=True)
class BeamResult:
    ids: list[int]  # the best hypothesis' new tokens, its stop id included when it has one
    score: float  # its sum of log-probabilities / len(ids) ** length_penalty
    ended: bool  # it ended with a stop id (rather than at the length limit)


class _Finished:
    """The best `size` finished hypotheses so far, best first; among equal scores the one
    finished first stays ahead (and a newcomer that only ties the worst is not admitted)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.best: list[BeamResult] = []

    @property
    def full(self) -> bool:
        return len(self.best) == self.size

    @property
    def worst(self) -> float:
        return self.best[-1].score

    def offer(self, hypothesis: BeamResult) -> None:
        if self.full and hypothesis.score <= self.worst:
            return
        bisect.insort_right(self.best, hypothesis, key=lambda h: -h.score)
        del self.best[self.size :]


def best_possible_score(total: float, length: int, budget: int, length_penalty: float) -> float:
    """The best score that any continuation of a running hypothesis (summed log-probability
    `total` over `length` new tokens) can reach by the time it ends, at length + 1 .. budget.
    Its sum can only fall (log-probabilities are <= 0); which length is best for a sum <= 0
    depends on the sign of the penalty: the shortest for length_penalty <= 0, the longest for
    length_penalty > 0."""
    reach = budget if length_penalty > 0 else length + 1
    return total / reach**length_penalty


@torch.inference_mode()
def beam_search(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: BeamParams,
    *,
    use_cache: bool = True,
) -> BeamResult:
    """The best continuation of prompt_ids found by beam search (the module docstring says how)."""
    max_len = check_prompt(model, prompt_ids)
    weight = next(model.parameters())
    device = weight.device
    vocab = model.config.vocab_size
    assert vocab is not None  # a built model always has one
    beams, penalty = params.beams, params.length_penalty
    budget = min(params.max_new_tokens, max_len - len(prompt_ids))
    stops = [i for i in params.stop_ids if i < vocab]  # an id the model cannot emit never stops
    is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
    is_stop[stops] = True
    # At most `beams` rows can offer each stop id, so this many candidates always hold `beams`
    # that do not stop.
    candidates = beams * (1 + len(stops))

    prompt = torch.tensor([list(prompt_ids)], device=device)
    cache = None
    if use_cache:
        cache = KVCache(
            model.config,
            1,
            len(prompt_ids) + budget,
            device=device,
            dtype=weight.dtype,
            slots=beams,
        )
    # The board: each running hypothesis' new tokens (host lists) and summed log-probabilities.
    running: list[list[int]] = [[]]
    sums = torch.zeros(1, device=device)
    step_input = prompt
    finished = _Finished(beams)
    for length in range(1, budget + 1):
        if cache is None:
            board = torch.tensor(running, dtype=torch.long, device=device).view(len(running), -1)
            step_input = torch.cat([prompt.expand(len(running), -1), board], dim=1)
        out = model(step_input, kv_cache=cache, last_only=True)
        assert out.logits is not None
        totals = sums[:, None] + out.logits[:, -1].float().log_softmax(dim=-1)  # (running, V)
        values, flat = torch.topk(totals.view(-1), min(candidates, totals.numel()))
        parents, tokens = flat // vocab, flat % vocab
        stopped = is_stop[tokens]
        sums_h = values.tolist()
        host = zip(sums_h, parents.tolist(), tokens.tolist(), stopped.tolist())
        kept: list[int] = []  # ranks of the candidates that run on, best first
        grown: list[list[int]] = []
        for rank, (total, parent, token, stop) in enumerate(host):
            if stop:
                if rank < beams:
                    ids = [*running[parent], token]
                    finished.offer(BeamResult(ids, total / length**penalty, ended=True))
            elif len(kept) < beams:
                kept.append(rank)
                grown.append([*running[parent], token])
        running = grown
        if not running:  # every candidate stopped: nothing left to extend
            return finished.best[0]
        if finished.full and params.early_stopping:
            return finished.best[0]
        # The first kept sum is the largest, so it bounds them all. (At the budget the running
        # ones end at this length instead, and the loop below scores them.)
        if finished.full and length < budget:
            if best_possible_score(sums_h[kept[0]], length, budget, penalty) <= finished.worst:
                return finished.best[0]
        index = torch.tensor(kept, device=device)
        sums = values[index]
        step_input = tokens[index].view(-1, 1)
        if cache is not None:
            cache.reorder(parents[index])
    for ids, total in zip(running, sums.tolist(), strict=True):
        finished.offer(BeamResult(ids, total / len(ids) ** penalty, ended=False))
    return finished.best[0]
