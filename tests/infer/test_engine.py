"""The engine: continuous batching changes when a request's tokens are computed, never which."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
import torch

from graft.data.tokenizer import bytes_tokenizer
from graft.infer.engine import Engine, EngineConfig, QueueFull, Request
from graft.infer.generate import GeneratedToken, SamplingParams, generate_steps
from graft.infer.stream import TextStream
from graft.model.config import ModelConfig
from graft.model.kv_cache import SlotKVCache
from graft.model.transformer import LanguageModel

TOKENIZER = bytes_tokenizer()  # 262 ids: bytes, then special tokens
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2)


def model_of(style: str = "gpt2", **overrides: object) -> LanguageModel:
    torch.manual_seed(0)
    # A large init scale gives peaked distributions, so greedy decoding is not a constant.
    kw = {
        **dict(vocab_size=262, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, init_std=0.3),
        **(LLAMA if style == "llama" else {}),
        **overrides,
    }
    return LanguageModel(ModelConfig(**kw)).eval()


def ascii_model() -> LanguageModel:
    """A model that only ever writes printable ASCII (other rows of its output layer are zero, and
    some printable token always scores above zero), so its text can be cut at stop strings."""
    model = model_of(tie_embeddings=False)
    with torch.no_grad():
        keep = torch.zeros(262, dtype=torch.bool)
        keep[32:127] = True
        model.lm_head.weight[~keep] = 0.0
        model.lm_head.weight[keep] *= 3.0
    return model


def reference(model: LanguageModel, request: Request) -> list[GeneratedToken]:
    return list(generate_steps(model, request.prompt_ids, request.params))


def run_to_end(engine: Engine) -> None:
    for _ in range(1000):
        if engine.step() == 0 and engine.stats.waiting == 0:
            return
    raise AssertionError("the engine did not finish its requests")


def mixed_requests(model: LanguageModel, sampled: bool) -> list[Request]:
    """Requests of different prompt and output lengths; one leaves early on a stop id."""

    def params(i: int, **kw: object) -> SamplingParams:
        if sampled:
            base = SamplingParams(max_new_tokens=8 + 5 * i, temperature=0.9, top_k=40, seed=100 + i)
        else:
            base = SamplingParams(max_new_tokens=8 + 5 * i, temperature=0)
        return dataclasses.replace(base, **kw)

    prompts = [
        [5, 17, 3],
        list(range(40, 51)),
        [7],
        list(range(100, 120)),
        [9, 9, 9, 9, 9, 9],
        [200, 1],
    ]
    requests = [Request(p, params(i, logprobs=3 if i % 2 else None)) for i, p in enumerate(prompts)]
    # Penalties and min-p ride along in one request: they need the request's own token history.
    requests[2] = Request(
        prompts[2],
        params(
            2, repetition_penalty=1.3, frequency_penalty=0.5, **({"min_p": 0.05} if sampled else {})
        ),
    )
    # Request 3 stops early on a token it would otherwise generate mid-way.
    free = reference(model, requests[3])
    requests[3] = Request(
        prompts[3], dataclasses.replace(requests[3].params, stop_ids=frozenset({free[4].id}))
    )
    return requests


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_requests_joining_and_leaving_mid_decode_get_exactly_their_own_tokens(style, sampled):
    model = model_of(style)
    requests = mixed_requests(model, sampled)
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=3))
    handles = [engine.submit(r) for r in requests[:2]]
    uneven_steps, batches = 0, []
    for arrivals in ([], [], requests[2:4], [], [], requests[4:], *[[]] * 200):
        handles += [engine.submit(r) for r in arrivals]
        running = engine.step()
        batches.append(engine.stats.last_batch_size)
        uneven_steps += len(set(engine.cache.lengths[:running])) > 1
        if running == 0 and engine.stats.waiting == 0 and len(handles) == len(requests):
            break
    assert (
        max(batches) == 3 and uneven_steps > 5
    )  # the batch was full, and its rows at different lengths

    for request, handle in zip(requests, handles, strict=True):
        got, expected = handle.result(timeout=0), reference(model, request)
        assert got.token_ids == [t.id for t in expected]
        assert got.finish_reason == ("stop" if request.params.stop_ids else "length")
        for a, b in zip(
            got.tokens, expected, strict=True
        ):  # batched float32 logits: equal to rounding
            if b.logprob is not None:
                assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
                assert [i for i, _ in a.top] == [i for i, _ in b.top]
        # Served alone, a request runs generate()'s arithmetic exactly: logprobs equal to the bit.
        (alone,) = Engine(model, TOKENIZER).generate([request])
        assert alone.tokens == expected
    assert (
        handles[0].result(timeout=0) is handles[0].result()
    )  # a completion can be asked for again


def test_events_stream_text_then_one_final_event():
    model = ascii_model()
    request = Request([72, 105], SamplingParams(max_new_tokens=30, temperature=0, logprobs=2))
    engine = Engine(model, TOKENIZER)
    handle = engine.submit(request)
    run_to_end(engine)
    events = list(handle.events(timeout=0))
    *tokens, final = events
    assert len(tokens) == 30 and all(
        e.token is not None and e.finish_reason is None for e in tokens
    )
    assert [e.completion_tokens for e in tokens] == list(range(1, 31))
    assert final.token is None and final.finish_reason == "length" and final.completion_tokens == 30
    assert {e.prompt_tokens for e in events} == {2} and {e.request_id for e in events} == {
        request.request_id
    }
    assert all(isinstance(e.token.logprob, float) and len(e.token.top) == 2 for e in tokens)
    stream = TextStream(TOKENIZER)
    expected = "".join(stream.push(t.id) for t in reference(model, request)) + stream.flush()
    assert (
        "".join(e.text for e in events) == expected
        and expected.isprintable()
        and len(set(expected)) > 3
    )


def test_stop_strings_stop_ids_max_tokens_and_a_full_context():
    model = ascii_model()
    engine = Engine(model, TOKENIZER)
    prompt = [72, 105]
    (free,) = engine.generate([Request(prompt, SamplingParams(max_new_tokens=40, temperature=0))])
    text = free.text
    assert free.finish_reason == "length" and len(text) == 40

    stop = text[12:15]  # a stop string that starts in one token and ends two tokens later
    cut = text.index(stop)
    request = Request(
        prompt, SamplingParams(max_new_tokens=40, temperature=0), stop=("never there", stop)
    )
    handle = engine.submit(request)
    run_to_end(engine)
    events = list(handle.events(timeout=0))
    assert "".join(e.text for e in events) == text[:cut]  # no part of the stop string is ever sent
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == cut + len(stop)

    stop_id = free.token_ids[7]
    (by_id,) = engine.generate(
        [
            Request(
                prompt,
                SamplingParams(max_new_tokens=40, temperature=0, stop_ids=frozenset({stop_id})),
            )
        ]
    )
    first = free.token_ids.index(stop_id)
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[: first + 1]
    assert by_id.text == text[:first]  # the stop id's own text is not part of the completion

    (short,) = engine.generate([Request(prompt, SamplingParams(max_new_tokens=5, temperature=0))])
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:5]
    (full,) = engine.generate(
        [Request(list(range(65, 125)), SamplingParams(max_new_tokens=30, temperature=0))]
    )
    assert (
        full.finish_reason == "length" and full.completion_tokens == 4
    )  # 60 + 4 fills the 64-token context


def test_cancel_frees_slots_of_running_and_waiting_requests():
    model = model_of()
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=1))
    running = engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=50, temperature=0)))
    waiting = engine.submit(Request([4, 5], SamplingParams(max_new_tokens=50, temperature=0)))
    engine.step()
    engine.step()
    assert engine.stats.running == 1 and engine.stats.waiting == 1
    running.cancel()
    waiting.cancel()
    assert engine.step() == 0 and engine.stats.waiting == 0
    for handle, tokens in ((running, 3), (waiting, 0)):  # prefill + 2 decodes before the cancel
        *_, final = handle.events(timeout=0)
        assert (
            final.finish_reason == "cancelled"
            and final.token is None
            and final.completion_tokens == tokens
        )
    request = Request([6, 7, 8, 9], SamplingParams(max_new_tokens=12, temperature=0))
    (after,) = engine.generate([request])  # the freed slot serves the next request, as if new
    assert after.tokens == reference(model, request)


def test_the_token_budget_and_max_batch_bound_what_runs_together():
    model = model_of("llama")
    requests = [
        Request(list(range(1 + i, 6 + i)), SamplingParams(max_new_tokens=15, temperature=0))
        for i in range(5)
    ]  # each costs 5 + 15 = 20 tokens of the budget
    for config, bound in (
        (EngineConfig(max_batch=2), 2),
        (EngineConfig(max_batch=4, max_batch_tokens=45), 2),
        (EngineConfig(max_batch=4, max_batch_tokens=39), 1),
    ):
        engine = Engine(model, TOKENIZER, config)
        handles = [engine.submit(r) for r in requests]
        sizes = []
        while engine.step() or engine.stats.waiting:
            sizes.append(engine.stats.last_batch_size)
        assert max(sizes) == bound
        for request, handle in zip(requests, handles, strict=True):
            assert handle.result(timeout=0).token_ids == [t.id for t in reference(model, request)]


def test_submit_refuses_what_can_never_run_and_a_full_queue():
    engine = Engine(model_of(), TOKENIZER, EngineConfig(max_queue=2, max_batch_tokens=60))
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    for prompt, params, stop, match in (
        ([], greedy, (), "at least one token"),
        (list(range(64)), greedy, (), "context is 64"),
        ([1, 262], greedy, (), "outside the model's vocabulary"),
        ([1, 2], SamplingParams(max_new_tokens=59, temperature=0), (), "max_batch_tokens"),
        ([1, 2], greedy, ("",), "empty"),
    ):
        with pytest.raises(ValueError, match=match):
            engine.submit(Request(prompt, params, stop))
    engine.submit(Request([1], greedy))
    engine.submit(Request([1], greedy))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], greedy))
    assert engine.stats.total_requests == 2
    encoder = model_of(attention="bidirectional")
    with pytest.raises(ValueError, match="cannot generate"):
        Engine(encoder, TOKENIZER).submit(Request([1], greedy))
    # A decoder classifier has no LM head to sample from: the engine took it, as
    # `graft generate` did not (one rule now, `check_prompt`).
    classifier = model_of(head="sequence", labels=("a", "b"))
    with pytest.raises(ValueError, match="cannot generate"):
        Engine(classifier, TOKENIZER).submit(Request([1], greedy))


def test_generate_queues_more_requests_than_the_queue_holds():
    model = model_of()
    requests = [
        Request([i + 1, i + 2], SamplingParams(max_new_tokens=6, temperature=0.7, seed=i))
        for i in range(7)
    ]
    completions = Engine(model, TOKENIZER, EngineConfig(max_batch=2, max_queue=2)).generate(
        requests
    )
    assert [c.request_id for c in completions] == [r.request_id for r in requests]
    assert [c.tokens for c in completions] == [reference(model, r) for r in requests]


def test_background_thread_serves_blocking_and_asyncio_readers():
    model = model_of()
    requests = [
        Request(
            [3, 1, 4, 1, 5][: i + 1], SamplingParams(max_new_tokens=10 + i, temperature=0.8, seed=i)
        )
        for i in range(4)
    ]
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=2))
    engine.start()
    try:
        handles = [engine.submit(r) for r in requests]

        async def read_async(handle):
            return [e async for e in handle.aevents()]

        async def read_two():
            return await asyncio.gather(*(read_async(h) for h in handles[2:]))

        asynchronous = asyncio.run(
            asyncio.wait_for(read_two(), timeout=30)
        )  # while the engine works
        blocking = [list(h.events(timeout=30)) for h in handles[:2]]
        for request, events in zip(requests, blocking + list(asynchronous), strict=True):
            assert [e.token for e in events[:-1]] == reference(model, request)
            assert events[-1].finish_reason == "length"
        assert engine.generate(requests[:1])[0].tokens == reference(
            model, requests[0]
        )  # works beside the thread
    finally:
        engine.stop()
    leftover = engine.submit(requests[0])
    engine.stop()  # without a thread: what is left is cancelled, so no reader waits forever
    assert [e.finish_reason for e in leftover.events(timeout=0)] == ["cancelled"]


def test_threads_submitting_and_reading_at_once_each_get_their_own_tokens():
    model = model_of("llama")
    requests = [
        Request([i + 1, 2 * i + 3], SamplingParams(max_new_tokens=6 + i, temperature=0.9, seed=i))
        for i in range(6)
    ]
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=3))
    results: dict[int, list[GeneratedToken]] = {}

    def client(i: int) -> None:
        handle = engine.submit(requests[i])
        results[i] = [e.token for e in handle.events(timeout=30) if e.token is not None]

    engine.start()
    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        engine.stop()
    assert results == {i: reference(model, r) for i, r in enumerate(requests)}


def test_a_failing_step_ends_its_requests_with_error_and_the_engine_goes_on():
    model = model_of()
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=4))
    handles = [
        engine.submit(Request([1, 2, i], SamplingParams(max_new_tokens=20, temperature=0)))
        for i in range(3)
    ]

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    engine._decode_forward = broken
    assert engine.step() == 0  # the prefills worked; the decode failed for all three
    for handle in handles:
        *_, final = handle.events(timeout=0)
        assert (
            final.finish_reason == "error"
            and "injected fault" in final.error
            and final.completion_tokens == 1
        )
    engine._decode_forward = engine._logits
    request = Request([9, 8, 7], SamplingParams(max_new_tokens=8, temperature=0))
    assert engine.generate([request])[0].tokens == reference(model, request)


def test_embed_mean_pools_real_tokens_whatever_the_padding():
    for model in (model_of(), model_of(attention="bidirectional")):
        engine = Engine(model, TOKENIZER)
        inputs = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]
        vectors = engine.embed(inputs)
        assert vectors.shape == (2, 32) and vectors.dtype == torch.float32
        with torch.inference_mode():
            alone = model(torch.tensor([inputs[0]]), heads=[]).hidden[0].mean(dim=0)
        torch.testing.assert_close(
            vectors[0], alone, rtol=1e-5, atol=1e-5
        )  # the padding changed nothing
        torch.testing.assert_close(engine.embed(inputs[1:])[0], vectors[1], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="empty"):
            engine.embed([[1], []])


def test_classify_gives_label_probabilities_for_sequence_heads_only():
    model = model_of(head="sequence", labels=("neg", "neutral", "pos"))
    engine = Engine(model, TOKENIZER)
    inputs = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]
    probs = engine.classify(inputs)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    with torch.inference_mode():
        logits = model(torch.tensor([inputs[0]]), heads=["classifier"]).class_logits
        alone = logits.softmax(dim=-1)[0]
    torch.testing.assert_close(probs[0], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sequence classifier"):
        Engine(model_of(), TOKENIZER).classify(inputs)


def test_engine_config_refuses_nonsense():
    for bad in (
        dict(max_batch=0),
        dict(max_queue=0),
        dict(max_batch_tokens=0),
        dict(quantize="int4"),
        dict(quantize="int8", compile=True),
    ):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


def test_int8_engine_quantises_a_copy_and_stays_close():
    model = model_of(d_model=64, init_std=0.1)
    engine = Engine(model, TOKENIZER, EngineConfig(quantize="int8"))
    assert (
        type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    )  # the caller's model is untouched
    assert type(engine.model.model.layers[0].self_attn.qkv_proj) is not torch.nn.Linear
    ids = torch.tensor([list(range(10, 50))])
    with torch.inference_mode():
        exact, quantised = model(ids).logits[0], engine.model(ids).logits[0]
    # int8 weights and per-call int8 activations: a few percent of error (another seed's model is
    # ~100%).
    assert (quantised - exact).norm() / exact.norm() < 0.08
    assert (quantised.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.85
    requests = [
        Request([1, 2, 3][: i + 1], SamplingParams(max_new_tokens=10, temperature=0))
        for i in range(3)
    ]
    completions = engine.generate(requests)
    assert [(c.finish_reason, c.completion_tokens) for c in completions] == [("length", 10)] * 3


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_the_engine_decodes_with_fused_projections_on_a_copy_sharing_the_other_weights(style):
    model = model_of(style)
    engine = Engine(model, TOKENIZER)
    mine, its = model.model.layers[0].self_attn, engine.model.model.layers[0].self_attn
    assert mine.qkv_proj is None and isinstance(
        mine.q_proj, torch.nn.Linear
    )  # the caller's model is untouched
    assert not hasattr(its, "q_proj") and its.qkv_proj is not None
    kv_width = 2 * 8 if style == "llama" else 32  # kv heads x head dim
    assert its.qkv_proj.weight.shape == (32 + 2 * kv_width, 32)
    assert (
        its.o_proj.weight is mine.o_proj.weight
        and engine.model.lm_head.weight is model.lm_head.weight
    )
    ids = torch.tensor([list(range(10, 40))])
    with torch.inference_mode():
        torch.testing.assert_close(
            engine.model(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5
        )


def test_slot_cache_moves_a_sequence_to_a_freed_slot():
    model = model_of("llama")
    cache = SlotKVCache(model.config, 3, 64)
    assert (
        cache.bytes_per_slot == 2 * 2 * 2 * 64 * 8 * 4
    )  # K/V * layers * kv heads * positions * head dim * fp32
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3, 4]]), kv_cache=cache.prefill(2))
    before = [k[2, :, :4].clone() for k in cache.keys]
    cache.move(2, 0)
    assert cache.lengths == [4, 0, 0]
    assert all(torch.equal(k[0, :, :4], b) for k, b in zip(cache.keys, before, strict=True))


@pytest.mark.slow
def test_compiled_decode_gives_the_same_tokens():
    from torch._dynamo.utils import counters

    model = model_of("llama")
    requests = mixed_requests(model, sampled=True)
    engine = Engine(model, TOKENIZER, EngineConfig(max_batch=3, compile=True))
    torch._dynamo.reset()
    counters.clear()
    handles = [engine.submit(r) for r in requests[:3]]
    engine.step()
    handles += [engine.submit(r) for r in requests[3:]]
    run_to_end(engine)
    for request, handle in zip(requests, handles, strict=True):
        assert handle.result(timeout=0).token_ids == [t.id for t in reference(model, request)]
    # Batches of 3, 2 and 1, rows of equal and of different lengths: two graphs (with and without
    # the mask), each compiled once; a third would be a recompile every server pays for.
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_an_adapter_model_keeps_its_lora_projections_in_the_engine():
    from peft import LoraConfig, inject_adapter_in_model

    model = model_of()
    inject_adapter_in_model(
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), model
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # PEFT starts B at zero, which would hide a dropped adapter
    engine = Engine(model.eval(), TOKENIZER)
    assert (
        engine.model.model.layers[0].self_attn.qkv_proj is None
    )  # not fused: LoRA computes more than its weight
    ids = torch.tensor([list(range(10, 40))])
    with torch.inference_mode():
        torch.testing.assert_close(
            engine.model(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5
        )
