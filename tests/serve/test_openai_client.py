"""The official `openai` Python client against a live `graft serve` app (uvicorn on loopback):
models, completions, chat completions (streamed and not), logprobs and embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest
import torch

from graft.data.tokenizer import Tokenizer
from graft.infer.generate import SamplingParams, generate

from .conftest import CONTEXT, MODEL_NAME, Served, build, live_server

pytestmark = pytest.mark.slow
CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "the quick brown fox"},
]


@pytest.fixture(scope="module")
def server(tokenizer: Tokenizer) -> Iterator[tuple[Served, str]]:
    served = build(tokenizer, api_key="sk-test")
    with live_server(served.app) as url:
        yield served, url
    served.engine.stop()


@pytest.fixture(scope="module")
def client(server: tuple[Served, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def test_models_list_and_retrieve(client: openai.OpenAI):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].owned_by == "graft"
    model = client.models.retrieve(MODEL_NAME)
    assert model.id == MODEL_NAME
    assert model.model_extra["graft"]["context_length"] == CONTEXT


def test_completion_is_the_engine_free_generation(
    client: openai.OpenAI, server: tuple[Served, str], tokenizer: Tokenizer
):
    """Greedy text from the API equals graft.infer.generate's on the same prompt."""
    served, _ = server
    prompt = "The quick brown"
    result = client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0
    )
    ids = list(
        generate(
            served.engine.model,
            tokenizer.encode(prompt),
            SamplingParams(
                max_new_tokens=12, temperature=0, stop_ids=frozenset({tokenizer.eot_id})
            ),
        )
    )
    if ids and ids[-1] == tokenizer.eot_id:
        ids = ids[:-1]
    choice = result.choices[0]
    assert choice.text == tokenizer.decode(ids)
    assert choice.finish_reason in ("length", "stop")
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert result.usage.completion_tokens == len(ids) + (choice.finish_reason == "stop")
    assert result.model == MODEL_NAME and result.id.startswith("cmpl-")


def test_completion_stream_equals_non_stream_for_the_same_seed(client: openai.OpenAI):
    kw = dict(
        model=MODEL_NAME,
        prompt="A small model",
        max_tokens=24,
        temperature=1.0,
        top_p=0.95,
        seed=11,
    )
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert len([c for c in chunks if c.choices[0].text]) > 1  # it really came in pieces
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_from_token_ids_with_logprobs(client: openai.OpenAI, tokenizer: Tokenizer):
    ids = tokenizer.encode("the river runs")
    result = client.completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0, logprobs=3
    )
    lp = result.choices[0].logprobs
    assert (
        len(lp.tokens)
        == len(lp.token_logprobs)
        == len(lp.top_logprobs)
        == result.usage.completion_tokens
    )
    assert "".join(lp.tokens).startswith(result.choices[0].text)
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(logprob, max(top.values()), abs_tol=1e-5)


def test_chat_stream_equals_non_stream_for_the_same_seed(client: openai.OpenAI):
    kw = dict(model=MODEL_NAME, messages=CHAT, max_tokens=30, temperature=0.9, seed=5)
    whole = client.chat.completions.create(**kw)
    message = whole.choices[0].message
    assert message.role == "assistant" and whole.object == "chat.completion"
    stream = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    assert stream[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(content) == message.content
    assert len([piece for piece in content if piece]) > 1
    finals = [
        c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert (
        stream[-1].choices == []
        and stream[-1].usage.completion_tokens == whole.usage.completion_tokens
    )
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_chat_seeds_reproduce_and_differ(client: openai.OpenAI):
    def ask(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=1.0, seed=seed
            )
            .choices[0]
            .message.content
        )

    assert ask(1) == ask(1)
    assert ask(1) != ask(2)


def test_chat_logprobs(client: openai.OpenAI):
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    for item in content:
        assert (
            len(item.top_logprobs) == 2
            and item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        )
        assert (
            bytes(item.bytes).decode("utf-8", errors="replace") == item.token
            or "\ufffd" in item.token
        )


def test_chat_max_tokens_gives_length(client: openai.OpenAI):
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=3, temperature=0
    )
    assert result.usage.completion_tokens <= 3
    if result.usage.completion_tokens == 3:
        assert result.choices[0].finish_reason == "length"


def test_embeddings_float_and_base64(
    client: openai.OpenAI, server: tuple[Served, str], tokenizer: Tokenizer
):
    texts = ["the quick brown fox", "a slow red dog"]
    default = client.embeddings.create(model=MODEL_NAME, input=texts)  # the client asks for base64
    floats = client.embeddings.create(model=MODEL_NAME, input=texts, encoding_format="float")
    expected = server[0].engine.embed([tokenizer.encode(t) for t in texts])
    for result in (default, floats):
        assert [d.index for d in result.data] == [0, 1]
        got = torch.tensor([d.embedding for d in result.data])
        assert got.shape == (2, 32)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert floats.usage.prompt_tokens == sum(len(tokenizer.encode(t)) for t in texts)


def test_wrong_key_is_an_authentication_error(server: tuple[Served, str]):
    bad = openai.OpenAI(base_url=server[1] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_bad_request_is_a_bad_request_error_naming_the_field(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=5, top_p=1.5)
    assert caught.value.param == "top_p"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=5)
    assert missing.value.code == "model_not_found"
