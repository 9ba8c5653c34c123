"""Requests at the edges: work kept off the event loop, max_tokens defaults that fit the engine,
bodies sent with the wrong content type or without the key, and the wording of a few errors."""

from __future__ import annotations

import asyncio
import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.serve import completions, encodings
from graft.serve.completions import chat_ids
from graft.serve.http_errors import APIError
from graft.serve.schemas import ChatMessage, CompletionRequest
from graft.terminal_chat import ChatOptions, run_chat

from .conftest import CONTEXT, MODEL_NAME, Served, build

KEY = "sk-edges"
USER = [{"role": "user", "content": "the quick brown fox"}]
# Below the context (128): the engine's per-request limit, not the model's, is what binds.
BATCH_TOKENS = 60


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def spy_on_loop(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[bool]:
    """Replace module.name with a wrapper that records, per call, whether it ran on the event
    loop's thread (where a long tokenization would stall every other request)."""
    calls: list[bool] = []
    original: Callable[..., Any] = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(on_event_loop())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


# -- 3: tokenization runs in a worker thread ----------------------------------------------------


def test_completions_prepare_their_prompts_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    calls = spy_on_loop(monkeypatch, completions, "prepare_completion")
    for stream in (False, True):
        body = {"prompt": "the quick", "max_tokens": 1, "stream": stream}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
    assert calls == [False, False]


def test_embeddings_tokenize_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    calls = spy_on_loop(monkeypatch, encodings, "input_ids")
    response = client.post("/v1/embeddings", json={"input": "the quick brown fox"})
    assert response.status_code == 200, response.text
    assert calls == [False]


def longest_stall(work: Callable[[], object]) -> tuple[float, float]:
    """How long `work` took, and the longest another thread waited to run meanwhile: all of it
    when `work` holds the GIL throughout."""
    gaps, done = [0.0], threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.perf_counter()
    try:
        work()
    except APIError:
        pass  # past the context: refused, but only once it was tokenized
    finally:
        took = time.perf_counter() - started
        done.set()
        ticker.join()
    return took, max(gaps)


def test_tokenizing_a_long_prompt_lets_other_threads_run(served: Served):
    # A worker thread is no help while the tokenizer holds the GIL: the event loop would wait.
    text = "the quick brown fox " * 25_000
    body = CompletionRequest(prompt=text)
    tokenizer, info = served.engine.tokenizer, served.info
    for work in (
        lambda: completions.prepare_completion(body, tokenizer, info, 4 * CONTEXT),
        lambda: encodings.input_ids(text, tokenizer, info),
    ):
        took, stalled = longest_stall(work)
        assert stalled < took / 2, (took, stalled)


# -- 4: max_tokens and the engine's max_batch_tokens ----------------------------------------------


@pytest.fixture(scope="module")
def small_engine(tokenizer: Tokenizer) -> Iterator[TestClient]:
    served = build(tokenizer, max_batch_tokens=BATCH_TOKENS)
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c
    served.engine.stop()


def test_a_default_max_tokens_fits_max_batch_tokens(small_engine: TestClient):
    for path, body in (
        ("/v1/chat/completions", {"messages": USER}),  # default: the rest of the context
        ("/v1/completions", {"prompt": "the quick brown fox " * 10}),  # default: 16
    ):
        response = small_engine.post(path, json={**body, "temperature": 0})
        assert response.status_code == 200, (path, response.text)
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= BATCH_TOKENS
    # The prompt is long enough that OpenAI's default of 16 new tokens would not fit either.
    assert usage["prompt_tokens"] + 16 > BATCH_TOKENS


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 100}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": USER, "max_completion_tokens": 100},
            "max_completion_tokens",
        ),
        ("/v1/completions", {"prompt": "the quick", "max_tokens": 100}, "max_tokens"),
    ],
)
def test_a_max_tokens_past_max_batch_tokens_is_refused_naming_it(
    small_engine: TestClient, path: str, body: dict[str, Any], field: str
):
    response = small_engine.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert error["message"].startswith(f"{field}: ") and str(BATCH_TOKENS) in error["message"]


def test_a_prompt_past_max_batch_tokens_is_refused_naming_it(small_engine: TestClient):
    prompt = "the quick brown fox " * 20  # past 60 tokens, within the 128 of the context
    response = small_engine.post("/v1/completions", json={"prompt": prompt})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt" and str(BATCH_TOKENS) in error["message"], error


# -- 5: attention rounded to 4 decimals -----------------------------------------------------------


def test_attention_numbers_have_at_most_four_decimals(client: TestClient):
    response = client.post("/v1/attention", json={"prompt": "the quick brown fox"})
    assert response.status_code == 200, response.text
    body = response.json()
    for name in ("rollout", "last_layer"):
        values = [v for row in body[name] for v in row]
        assert values and all(v == round(v, 4) for v in values), (name, values[:5])


# -- 6, 7: content type and the key, before the body ----------------------------------------------


def test_a_body_not_sent_as_json_names_the_content_type(client: TestClient):
    form = "application/x-www-form-urlencoded"
    response = client.post(
        "/v1/completions",
        content=b'{"prompt": "a", "max_tokens": 1}',
        headers={"Content-Type": form},
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "Content-Type: application/json" in message and form in message, message


@pytest.fixture(scope="module")
def keyed(tokenizer: Tokenizer) -> Iterator[TestClient]:
    served = build(tokenizer, api_key=KEY)
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c
    served.engine.stop()


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"prompt": "a"}', "application/x-www-form-urlencoded"),
        (b"", "application/json"),
    ],
)
def test_the_key_is_checked_before_the_body(keyed: TestClient, raw: bytes, content_type: str):
    response = keyed.post("/v1/completions", content=raw, headers={"Content-Type": content_type})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    # With the key, the same body is the client's mistake.
    with_key = {"Content-Type": content_type, "Authorization": f"Bearer {KEY}"}
    assert keyed.post("/v1/completions", content=raw, headers=with_key).status_code == 400


def test_the_key_guards_unknown_v1_paths_but_not_the_open_ones(keyed: TestClient):
    assert keyed.post("/v1/nothing", json={}).status_code == 401
    for path in ("/", "/health", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    schema = keyed.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


# -- 8, 9: error wording --------------------------------------------------------------------------


def test_a_failing_chat_template_is_named_once(tokenizer: Tokenizer):
    failing = copy.copy(tokenizer)  # the session's tokenizer stays as it is
    failing.chat_template = "{{ raise_exception('x') }}"
    with pytest.raises(APIError) as caught:
        chat_ids([ChatMessage(role="user", content="hi")], failing)
    assert caught.value.message == "messages: chat template failed: x"
    assert caught.value.param == "messages"


@pytest.fixture(scope="module")
def encoder(tokenizer: Tokenizer) -> Iterator[TestClient]:
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=CONTEXT,
        d_model=32,
        n_layers=2,
        n_heads=2,
        attention="bidirectional",
    )
    served = build(tokenizer, LanguageModel(config).eval())
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c
    served.engine.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/attention", {"messages": USER}),
        ("/v1/classify", {"input": "x"}),
        ("/v1/qa", {"question": "x", "context": "y"}),
    ],
)
def test_an_encoder_is_called_an_encoder(encoder: TestClient, path: str, body: dict[str, Any]):
    response = encoder.post(path, json={"model": MODEL_NAME, **body})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "an encoder" in message and "a encoder" not in message, message


# -- 1, 2: sampling settings refused in one line before a model loads -----------------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"temperature": math.nan}, "temperature must be a finite number >= 0"),
        ({"temperature": math.inf}, "temperature must be a finite number >= 0"),
        ({"seed": 10**23}, "seed must be in [0, 9223372036854775807]"),
    ],
)
def test_graft_chat_refuses_bad_settings_in_one_line(
    setting: dict[str, Any], expected: str, tmp_path: Path
):
    with pytest.raises(ConfigError) as caught:
        run_chat(ChatOptions(checkpoint=tmp_path / "never-read", **setting))
    message = str(caught.value)
    assert message.startswith(f"chat: {expected}") and "\n" not in message, message


def test_a_completion_prompt_reads_line_ends_as_training_documents_do(
    client: TestClient, tokenizer: Tokenizer, tmp_path: Path
):
    """Documents are trained with "\\r\\n" and "\\r" read as "\\n"; a prompt kept the "\\r", a
    token training never made. graft generate and /v1/completions share data.inputs.prompt_ids."""
    from graft.data.documents import iter_documents
    from graft.data.inputs import prompt_ids

    text = "Free entry in a weekly prize.\r\nCall now.\rBye"
    (tmp_path / "sms.txt").write_bytes(text.encode())
    (trained,) = [doc.read() for doc in iter_documents([tmp_path / "sms.txt"])]
    assert prompt_ids(tokenizer, text) == tokenizer.encode(trained) != tokenizer.encode(text)
    body = {"model": "tiny", "max_tokens": 1, "temperature": 0}
    usage = [
        client.post("/v1/completions", json={**body, "prompt": p}).json()["usage"]
        for p in (text, trained)
    ]
    assert usage[0]["prompt_tokens"] == usage[1]["prompt_tokens"] == len(tokenizer.encode(trained))
