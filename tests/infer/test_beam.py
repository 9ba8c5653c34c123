"""Beam search: one beam is greedy decoding, enough beams find the exhaustive optimum, and the KV
cache changes nothing."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from graft.infer.beam import BeamParams, beam_search, best_possible_score
from graft.infer.generate import SamplingParams, generate
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel

STOP = 0


def model_of(style: str) -> LanguageModel:
    torch.manual_seed(0)
    kw: dict[str, Any] = (
        dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2)
        if style == "llama"
        else {}
    )
    # A larger init scale gives peaked distributions, so greedy decoding is not a constant.
    return LanguageModel(
        ModelConfig(
            vocab_size=61, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, init_std=0.3, **kw
        )
    ).eval()


def toy_model(seed: int, vocab: int) -> LanguageModel:
    """A handful of tokens, and weights large enough that the distributions are far from
    uniform (so which continuation is best is decided by the model, not by rounding)."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab, max_seq_len=16, d_model=16, n_layers=2, n_heads=2, init_std=0.6
    )
    return LanguageModel(config).eval()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_one_beam_is_greedy_decoding_with_the_same_stop_handling(style: str) -> None:
    model = model_of(style)
    for prompt in ([5, 17, 3, 42], [1], [7, 7, 7]):
        free = list(generate(model, prompt, SamplingParams(max_new_tokens=12, temperature=0)))
        beam = beam_search(model, prompt, BeamParams(beams=1, max_new_tokens=12))
        assert beam.ids == free and not beam.ended
        stop = free[4]  # a stop id that does occur
        greedy = SamplingParams(max_new_tokens=12, temperature=0, stop_ids=frozenset({stop}))
        stopped = list(generate(model, prompt, greedy))
        params = BeamParams(beams=1, max_new_tokens=12, stop_ids=frozenset({stop}))
        beam = beam_search(model, prompt, params)
        assert beam.ids == stopped == free[: free.index(stop) + 1] and beam.ended


def continuations(vocab: int, most: int) -> list[tuple[int, ...]]:
    """Every continuation that ends at STOP (and holds no other) or runs to `most` tokens."""
    found = []
    for length in range(1, most + 1):
        for ids in itertools.product(range(vocab), repeat=length):
            if STOP not in ids[:-1] and (ids[-1] == STOP or length == most):
                found.append(ids)
    return found


@torch.no_grad()
def summed_logprobs(
    model: LanguageModel, prompt: list[int], continuations: list[tuple[int, ...]]
) -> dict[tuple[int, ...], float]:
    """Each continuation's summed log-probabilities after prompt, from uncached passes over whole
    sequences (one batch per length)."""
    sums: dict[tuple[int, ...], float] = {}
    for length in {len(ids) for ids in continuations}:
        group = [ids for ids in continuations if len(ids) == length]
        tokens = torch.tensor([prompt + list(ids) for ids in group])
        logprobs = model(tokens).logits.float().log_softmax(dim=-1)[:, len(prompt) - 1 : -1]
        picked = logprobs.gather(-1, tokens[:, len(prompt) :, None])[..., 0]  # (group, length)
        sums.update(zip(group, picked.sum(dim=-1).tolist(), strict=True))
    return sums


def optimum(sums: dict[tuple[int, ...], float], penalty: float) -> tuple[tuple[int, ...], float]:
    scores = {ids: total / len(ids) ** penalty for ids, total in sums.items()}
    best = max(scores, key=scores.__getitem__)
    return best, scores[best]


@pytest.mark.parametrize("vocab, most", [(6, 2), (5, 3)])
def test_enough_beams_find_the_exhaustive_optimum(vocab: int, most: int) -> None:
    beams = vocab ** (most - 1)  # room for every prefix, so the search cannot prune the best one
    greedy = SamplingParams(max_new_tokens=most, temperature=0, stop_ids=frozenset({STOP}))
    greedy_missed = 0
    for seed, prompt in itertools.product(range(4), ([1], [3, 2])):
        model = toy_model(seed, vocab)
        sums = summed_logprobs(model, prompt, continuations(vocab, most))
        for penalty in (0.0, 1.0, 2.0):
            best, score = optimum(sums, penalty)
            params = BeamParams(
                beams=beams,
                max_new_tokens=most,
                length_penalty=penalty,
                stop_ids=frozenset({STOP}),
                early_stopping=False,
            )
            found = beam_search(model, prompt, params)
            assert tuple(found.ids) == best, (seed, prompt, penalty)
            assert found.score == pytest.approx(score, abs=1e-5)
            assert found.ended == (best[-1] == STOP)
            greedy_missed += tuple(generate(model, prompt, greedy)) != best
    assert greedy_missed > 0  # the search does better than one token at a time somewhere


def test_the_bound_on_a_running_hypothesis_is_sound_and_tight() -> None:
    budget = 6
    for penalty, total, length in itertools.product(
        (-1.5, -0.5, 0.0, 0.5, 1.0, 2.0), (-3.0, -0.7, 0.0), range(1, budget)
    ):
        bound = best_possible_score(total, length, budget, penalty)
        # Any later sum is <= total; the bound is reached by adding log-probabilities of 0.
        reachable = [
            later / end**penalty
            for end in range(length + 1, budget + 1)
            for later in (total, total - 0.1, total - 5.0)
        ]
        assert max(reachable) == pytest.approx(bound)


@torch.no_grad()
def reference_beam(
    model: LanguageModel, prompt: list[int], params: BeamParams
) -> tuple[tuple[int, ...], float]:
    """Beam search as beam.py's docstring states it, written plainly: whole sequences re-run,
    candidates sorted in Python, and (without early stopping) always run to the budget."""
    vocab, penalty = model.config.vocab_size, params.length_penalty
    assert vocab is not None
    running: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (ids, summed log-probs)
    finished: list[tuple[float, tuple[int, ...]]] = []  # (score, ids)
    for length in range(1, params.max_new_tokens + 1):
        tokens = torch.tensor([prompt + list(ids) for ids, _ in running])
        logprobs = model(tokens).logits[:, -1].float().log_softmax(dim=-1).tolist()
        candidates = sorted(
            (
                (total + logprobs[row][t], ids + (t,))
                for row, (ids, total) in enumerate(running)
                for t in range(vocab)
            ),
            key=lambda c: -c[0],
        )
        running = []
        for rank, (total, ids) in enumerate(candidates):
            if ids[-1] in params.stop_ids:
                if rank < params.beams:
                    finished.append((total / length**penalty, ids))
            elif len(running) < params.beams:
                running.append((ids, total))
        if params.early_stopping and len(finished) >= params.beams:
            running = []  # Hugging Face's early_stopping=True: the running ones are dropped
            break
    finished += [(total / len(ids) ** penalty, ids) for ids, total in running]
    score, ids = max(finished)
    return ids, score


def test_the_search_is_the_plain_one_and_stops_early_only_when_nothing_can_change() -> None:
    forwards = 0

    def count(*_: object) -> None:
        nonlocal forwards
        forwards += 1

    stopped_early = 0
    for seed, penalty, early_stopping in itertools.product(
        range(2), (-1.0, 0.0, 1.0, 2.0), (True, False)
    ):
        model, beams = toy_model(seed, 6), 2 + seed
        model.register_forward_hook(count)
        params = BeamParams(
            beams=beams,
            max_new_tokens=8,
            length_penalty=penalty,
            stop_ids=frozenset({STOP}),
            early_stopping=early_stopping,
        )
        ids, score = reference_beam(model, [1, 2], params)
        forwards = 0
        found = beam_search(model, [1, 2], params)
        assert tuple(found.ids) == ids, (seed, penalty, beams, early_stopping)
        assert found.score == pytest.approx(score, abs=1e-5)
        stopped_early += not early_stopping and forwards < params.max_new_tokens
    assert stopped_early > 0  # the bound did cut some searches short, and changed nothing


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_cache_gives_exactly_the_result_of_no_cache(style: str, early_stopping: bool) -> None:
    model = model_of(style)
    prompt = [5, 17, 3, 42]
    free = list(generate(model, prompt, SamplingParams(max_new_tokens=12, temperature=0)))
    for penalty in (0.0, 1.0):
        params = BeamParams(
            beams=4,
            max_new_tokens=12,
            length_penalty=penalty,
            stop_ids=frozenset({free[2]}),
            early_stopping=early_stopping,
        )
        with_cache = beam_search(model, prompt, params, use_cache=True)
        without = beam_search(model, prompt, params, use_cache=False)
        assert with_cache.ids == without.ids and with_cache.ended == without.ended
        assert with_cache.score == pytest.approx(without.score, abs=1e-4)
        assert with_cache.score <= 0 and len(with_cache.ids) >= 1


def test_the_context_limits_the_search() -> None:
    model = model_of("gpt2")  # a context of 64 tokens
    found = beam_search(model, list(range(61)), BeamParams(beams=3, max_new_tokens=10))
    assert len(found.ids) == 3  # no stop ids: the hypotheses run until the context is full
    found = beam_search(model, [1], BeamParams(beams=3, max_new_tokens=5))
    assert len(found.ids) == 5 and not found.ended


def test_bad_params_and_prompts_are_refused() -> None:
    for bad in (
        dict(beams=0),
        dict(max_new_tokens=0),
        dict(length_penalty=float("nan")),
        dict(length_penalty=float("inf")),
        dict(stop_ids=frozenset({-1})),
    ):
        with pytest.raises(ValueError):
            BeamParams(**{"beams": 2, "max_new_tokens": 4, **bad})  # type: ignore[arg-type]
    model = model_of("gpt2")
    params = BeamParams(beams=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="at least one token"):
        beam_search(model, [], params)
    with pytest.raises(ValueError, match="context is 64"):
        beam_search(model, list(range(64)), params)
