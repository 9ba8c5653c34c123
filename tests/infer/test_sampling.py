"""Sampling: each penalty and truncation does what its formula says, on crafted logits."""

import math

import pytest
import torch

from graft.infer.sampling import (
    SamplingParams,
    TokenHistory,
    apply_penalties,
    choose_next,
    sample_next,
    top_logprobs,
    truncate,
)


def history(prompt: list[int], output: list[int], vocab: int = 5) -> TokenHistory:
    h = TokenHistory.from_prompts([prompt], vocab)
    for token in output:
        h.add(torch.tensor([token]))
    return h


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0]])
    # 0 is in the prompt, 1 in the output; 2, 3, 4 never appeared.
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), history([0], [1]))
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0, 1.0]]
    assert logits.tolist() == [[2.0, -1.0, 0.5, -3.0, 1.0]]  # the caller's tensor is untouched
    # A penalty below 1 encourages repeats, again in the direction of higher probability for both
    # signs.
    out = apply_penalties(logits, SamplingParams(repetition_penalty=0.5), history([0], [1]))
    assert out.tolist() == [[4.0, -0.5, 0.5, -3.0, 1.0]]


def test_frequency_and_presence_penalties_count_generated_tokens_only():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    h = history([4], [0, 0, 2])  # 4 only in the prompt: not penalised
    out = apply_penalties(logits, SamplingParams(frequency_penalty=0.5), h)
    assert out.tolist() == [[0.0, 1.0, 0.5, 1.0, 1.0]]  # 1 - 0.5 * count
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.25), h)
    assert out.tolist() == [[0.75, 1.0, 0.75, 1.0, 1.0]]  # 1 - 0.25 * (count > 0)
    out = apply_penalties(logits, SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), h)
    assert out.tolist() == [[-0.25, 1.0, 0.25, 1.0, 1.0]]
    out = apply_penalties(
        logits, SamplingParams(frequency_penalty=-1.0), h
    )  # negative values reward repeats
    assert out.tolist() == [[3.0, 1.0, 2.0, 1.0, 1.0]]


def test_penalties_at_defaults_return_the_logits_unchanged_and_need_no_history():
    logits = torch.randn(2, 7, dtype=torch.bfloat16)
    assert apply_penalties(logits, SamplingParams(), None) is logits
    with pytest.raises(ValueError, match="history"):
        apply_penalties(logits, SamplingParams(presence_penalty=0.1), None)


def test_greedy_applies_penalties_before_argmax():
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    assert int(sample_next(logits, SamplingParams(temperature=0), None)) == 0
    penalised = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert int(sample_next(logits, penalised, None, TokenHistory.from_prompts([[0]], 3))) == 1


def test_min_p_keeps_exactly_the_tokens_above_its_share_of_the_top_probability():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    logits = probs.log()
    kept = truncate(logits, SamplingParams(min_p=0.4)).isfinite()  # threshold 0.2
    assert kept.tolist() == [[True, True, False, False]]
    kept = truncate(logits, SamplingParams(min_p=0.25)).isfinite()  # threshold 0.125
    assert kept.tolist() == [[True, True, True, False]]
    kept = truncate(logits, SamplingParams(min_p=1.0)).isfinite()
    assert kept.tolist() == [[True, False, False, False]]
    # After top-k has cut token 1, min-p measures against the same top token, so 2 still stays.
    kept = truncate(
        logits.index_select(1, torch.tensor([0, 2, 3])), SamplingParams(top_k=2, min_p=0.25)
    ).isfinite()
    assert kept.tolist() == [[True, True, False]]
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingParams(min_p=0.4), g)) for _ in range(300)}
    assert picks == {0, 1}


def test_logprobs_come_from_the_penalised_tempered_distribution_before_truncation():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    params = SamplingParams(temperature=0.5, top_k=1, repetition_penalty=2.0, logprobs=3)
    choice = choose_next(logits, params, torch.Generator().manual_seed(0), history([0], []))
    expected = (torch.tensor([[1.0, 1.0, 0.5, -1.0, 0.0]]) / 0.5).log_softmax(-1)
    assert torch.allclose(choice.logprobs, expected)
    assert choice.logprobs.isfinite().all()  # top_k=1 cut nothing from what is reported
    top = top_logprobs(choice.logprobs[0], 3)
    assert [i for i, _ in top][2] == 2 and {i for i, _ in top[:2]} == {0, 1}
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert top_logprobs(choice.logprobs[0], 0) == []
    assert len(top_logprobs(choice.logprobs[0], 20)) == 5  # never more than the vocabulary
    assert (
        choose_next(logits, SamplingParams(), torch.Generator()).logprobs is None
    )  # not asked, not computed
    greedy = choose_next(logits, SamplingParams(temperature=0, logprobs=0), None)
    assert torch.allclose(greedy.logprobs, logits.log_softmax(-1))  # greedy reports temperature 1
    assert math.isclose(float(greedy.logprobs.exp().sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (dict(min_p=0.0), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"),
        (dict(frequency_penalty=2.5), "frequency_penalty"),
        (dict(frequency_penalty=float("nan")), "frequency_penalty"),
        (dict(presence_penalty=-2.1), "presence_penalty"),
        (dict(logprobs=-1), "logprobs"),
        (dict(logprobs=21), "logprobs"),
    ],
)
def test_bad_new_sampling_params_are_refused_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**bad)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(temperature=NAN), "temperature must be a finite number >= 0"),
        (dict(temperature=INF), "temperature must be a finite number >= 0"),
        (dict(top_p=NAN), "top_p"),
        (dict(top_p=INF), "top_p"),
        (dict(min_p=NAN), "min_p"),
        (dict(min_p=INF), "min_p"),
        (dict(repetition_penalty=NAN), "repetition_penalty"),
        (dict(frequency_penalty=INF), "frequency_penalty"),
        (dict(presence_penalty=NAN), "presence_penalty"),
        (dict(presence_penalty=-INF), "presence_penalty"),
        (dict(seed=10**23), r"seed must be in \[0, 9223372036854775807\]"),
        (dict(seed=2**63), "seed"),
        (dict(seed=-1), "seed"),
    ],
)
def test_nan_infinite_and_out_of_range_settings_are_refused_by_name(bad, message):
    # NaN slips through a plain `x < 0` check and reached torch.multinomial as NaN probabilities;
    # a huge seed reached manual_seed, which raised OverflowError.
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


def test_edge_values_are_accepted():
    SamplingParams(
        min_p=1.0, repetition_penalty=0.01, frequency_penalty=-2.0, presence_penalty=2.0, logprobs=0
    )
    SamplingParams(logprobs=20)
    SamplingParams(seed=0)
    SamplingParams(seed=2**63 - 1)


def test_extreme_but_valid_settings_never_produce_nan_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 50) * 5
    greedy = logits.argmax(-1)
    for params in (
        SamplingParams(temperature=1e-183),
        SamplingParams(temperature=5e-6, logprobs=2),
    ):
        # A temperature this small would overflow logits / T to inf; it decodes greedily instead.
        assert torch.equal(
            choose_next(logits, params, torch.Generator().manual_seed(1)).ids, greedy
        )
    # A top_p that float32 rounds to 0 keeps the most likely token rather than dropping every one.
    tiny_p = SamplingParams(top_p=5e-324)
    assert torch.equal(choose_next(logits, tiny_p, torch.Generator().manual_seed(1)).ids, greedy)
    with pytest.raises(ValueError, match="repetition_penalty must be in"):
        SamplingParams(repetition_penalty=1e-300)
