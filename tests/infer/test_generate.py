"""Generation: the KV cache changes speed, never tokens."""

import pytest
import torch

from graft.infer.generate import SamplingParams, generate, generate_steps, sample_next
from graft.infer.sampling import TokenHistory, apply_penalties
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel


def model_of(style: str) -> LanguageModel:
    torch.manual_seed(0)
    kw = (
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


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=40, temperature=0),
        SamplingParams(max_new_tokens=40, temperature=0.9, top_k=20, top_p=0.9, seed=3),
    ],
)
def test_cache_gives_exactly_the_tokens_of_no_cache(style, params):
    model = model_of(style)
    prompt = [5, 17, 3, 42]
    with_cache = list(generate(model, prompt, params, use_cache=True))
    without = list(generate(model, prompt, params, use_cache=False))
    assert len(with_cache) == 40
    assert with_cache == without
    assert len(set(with_cache)) > 1


def test_generation_stops_on_stop_id_and_at_context_end():
    model = model_of("gpt2")
    free = list(generate(model, [1, 2], SamplingParams(max_new_tokens=30, temperature=0)))
    stop = free[5]
    stopped = list(
        generate(
            model,
            [1, 2],
            SamplingParams(max_new_tokens=30, temperature=0, stop_ids=frozenset({stop})),
        )
    )
    assert stopped == free[: free.index(stop) + 1]
    long = list(generate(model, list(range(60)), SamplingParams(max_new_tokens=30, temperature=0)))
    assert len(long) == 4  # the context holds 64 tokens


def test_same_seed_same_sample_other_seed_differs():
    model = model_of("gpt2")

    def run(seed: int) -> list[int]:
        return list(
            generate(model, [1], SamplingParams(max_new_tokens=30, temperature=1.0, seed=seed))
        )

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = {
        int(sample_next(logits, SamplingParams(temperature=1.0, top_k=2), g)) for _ in range(200)
    }
    assert picks == {0, 1}
    # softmax of these logits: 0.64, 0.24, 0.09, ...: top_p 0.7 keeps the first two.
    picks = {
        int(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), g)) for _ in range(200)
    }
    assert picks == {0, 1}
    assert int(sample_next(logits, SamplingParams(temperature=0), None)) == 0


def test_bad_sampling_params_are_refused():
    for bad in (
        dict(temperature=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=0),
        dict(max_new_tokens=0),
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# -- penalties, min-p and logprobs -------------------------------------------------------------


def _old_sample_next(logits, params, generator):
    # The sampler as it was before penalties, min-p and logprobs: the reference for "defaults change
    # nothing".
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def _old_generate(model, prompt_ids, params):
    # The no-cache decode loop as it was, drawing from the same seeded generator.
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    tokens = torch.tensor([list(prompt_ids)])
    out = []
    for _ in range(min(params.max_new_tokens, model.config.max_seq_len - len(prompt_ids))):
        next_id = _old_sample_next(model(tokens, last_only=True).logits[:, -1], params, generator)
        out.append(int(next_id))
        if int(next_id) in params.stop_ids:
            break
        tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)
    return out


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=30, temperature=0),
        SamplingParams(max_new_tokens=30, temperature=0.9, top_k=20, top_p=0.9, seed=3),
        SamplingParams(max_new_tokens=30, temperature=1.0, seed=7),
        # The new fields spelled out at their defaults.
        SamplingParams(
            max_new_tokens=30,
            temperature=0.7,
            top_k=10,
            seed=5,
            min_p=None,
            repetition_penalty=1.0,
            frequency_penalty=0.0,
            presence_penalty=0.0,
        ),
    ],
)
def test_new_options_at_defaults_give_the_old_tokens(style, params):
    model = model_of(style)
    old = _old_generate(model, [5, 17, 3, 42], params)
    assert list(generate(model, [5, 17, 3, 42], params)) == old
    assert list(generate(model, [5, 17, 3, 42], params, use_cache=False)) == old
    # Asking for logprobs computes more but draws no extra random numbers.
    with_logprobs = SamplingParams(**{**params.__dict__, "logprobs": 5})
    assert [t.id for t in generate_steps(model, [5, 17, 3, 42], with_logprobs)] == old


ALL_OPTIONS = [
    SamplingParams(
        max_new_tokens=40,
        temperature=0.8,
        top_k=30,
        top_p=0.95,
        min_p=0.05,
        repetition_penalty=1.3,
        frequency_penalty=0.5,
        presence_penalty=0.3,
        logprobs=5,
        seed=11,
    ),
    SamplingParams(
        max_new_tokens=40,
        temperature=0,
        repetition_penalty=1.5,
        frequency_penalty=0.4,
        presence_penalty=0.2,
        logprobs=3,
    ),
]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("params", ALL_OPTIONS)
def test_cache_gives_exactly_the_tokens_of_no_cache_with_every_option_on(style, params):
    model = model_of(style)
    with_cache = list(generate_steps(model, [5, 17, 3, 42], params, use_cache=True))
    without = list(generate_steps(model, [5, 17, 3, 42], params, use_cache=False))
    assert len(with_cache) == 40
    assert [t.id for t in with_cache] == [t.id for t in without]
    for a, b in zip(with_cache, without, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [i for i, _ in a.top] == [i for i, _ in b.top]


def test_penalties_change_greedy_output_and_discourage_repeats():
    model = model_of("gpt2")
    plain = list(generate(model, [1, 2], SamplingParams(max_new_tokens=40, temperature=0)))
    for penalty in (
        dict(repetition_penalty=3.0),
        dict(frequency_penalty=2.0),
        dict(presence_penalty=2.0),
    ):
        penalised = list(
            generate(model, [1, 2], SamplingParams(max_new_tokens=40, temperature=0, **penalty))
        )
        assert penalised != plain, penalty
        assert len(set(penalised)) > len(set(plain)), penalty


@pytest.mark.parametrize("params", ALL_OPTIONS)
def test_logprobs_are_log_softmax_of_the_penalised_tempered_logits(params):
    model = model_of("llama")
    prompt = [5, 17, 3, 42]
    steps = list(generate_steps(model, prompt, params))
    history = TokenHistory.from_prompts([prompt], model.config.vocab_size)
    tokens = list(prompt)
    temperature = params.temperature or 1.0  # greedy reports the distribution at temperature 1
    for step in steps:
        with torch.no_grad():
            logits = model(torch.tensor([tokens]), last_only=True).logits[:, -1]
        expected = (apply_penalties(logits, params, history).float() / temperature).log_softmax(-1)[
            0
        ]
        assert step.logprob == pytest.approx(float(expected[step.id]), abs=1e-4)
        assert len(step.top) == params.logprobs
        values = [v for _, v in step.top]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(float(expected.max()), abs=1e-4)
        assert {i for i, _ in step.top} == set(expected.topk(params.logprobs).indices.tolist())
        history.add(torch.tensor([step.id]))
        tokens.append(step.id)


def test_logprobs_zero_reports_the_chosen_token_only_and_none_reports_nothing():
    model = model_of("gpt2")
    steps = list(
        generate_steps(model, [1, 2], SamplingParams(max_new_tokens=5, temperature=0, logprobs=0))
    )
    assert all(s.logprob is not None and s.logprob <= 0 and s.top == [] for s in steps)
    steps = list(generate_steps(model, [1, 2], SamplingParams(max_new_tokens=5, temperature=0)))
    assert all(s.logprob is None and s.top == [] for s in steps)
