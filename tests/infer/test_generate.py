"""Generation: the KV cache changes speed, never tokens."""

import pytest
import torch

from graft.infer.generate import SamplingParams, generate, sample_next
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel


def model_of(style: str) -> LanguageModel:
    torch.manual_seed(0)
    kw = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2) if style == "llama" else {}
    # A larger init scale gives peaked distributions, so greedy decoding is not a constant.
    return LanguageModel(ModelConfig(vocab_size=61, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                                     init_std=0.3, **kw)).eval()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=40, temperature=0),
    SamplingParams(max_new_tokens=40, temperature=0.9, top_k=20, top_p=0.9, seed=3),
])
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
    stopped = list(generate(model, [1, 2], SamplingParams(max_new_tokens=30, temperature=0, stop_ids=frozenset({stop}))))
    assert stopped == free[: free.index(stop) + 1]
    long = list(generate(model, list(range(60)), SamplingParams(max_new_tokens=30, temperature=0)))
    assert len(long) == 4  # the context holds 64 tokens


def test_same_seed_same_sample_other_seed_differs():
    model = model_of("gpt2")
    run = lambda seed: list(generate(model, [1], SamplingParams(max_new_tokens=30, temperature=1.0, seed=seed)))  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingParams(temperature=1.0, top_k=2), g)) for _ in range(200)}
    assert picks == {0, 1}
    # softmax of these logits: 0.64, 0.24, 0.09, ...: top_p 0.7 keeps the first two.
    picks = {int(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), g)) for _ in range(200)}
    assert picks == {0, 1}
    assert int(sample_next(logits, SamplingParams(temperature=0), None)) == 0


def test_bad_sampling_params_are_refused():
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
