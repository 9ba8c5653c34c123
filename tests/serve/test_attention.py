"""POST /v1/attention: the map is of exactly the ids the model reads for the same chat, and its
numbers are the model's own attention weights, rolled out and averaged."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.model.transformer import LanguageModel
from graft.serve.prompts import chat_prompt_ids

from .conftest import MODEL_NAME, build, tiny_model

KEY = "sk-attention"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the quick brown fox"},
    {"role": "assistant", "content": " jumps over the dog"},
]


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> LanguageModel:
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def client(tokenizer: Tokenizer, model: LanguageModel) -> Iterator[TestClient]:
    served = build(tokenizer, model, api_key=KEY)
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c
    served.engine.stop()


def direct(model: LanguageModel, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rollout and last layer (heads averaged) from the model's own attentions, computed here."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), heads=(), output_attentions=True)
    assert out.attentions is not None
    rollout = np.eye(len(ids))
    for layer in out.attentions:
        mixed = layer[0].double().mean(0).numpy() + np.eye(len(ids))
        rollout = (mixed / mixed.sum(-1, keepdims=True)) @ rollout
    return rollout, out.attentions[-1][0].double().mean(0).numpy()


def test_the_map_is_the_models_attention_over_what_the_chat_read(
    client: TestClient, tokenizer: Tokenizer, model: LanguageModel
):
    got = client.post("/v1/attention", headers=AUTH, json={"model": MODEL_NAME, "messages": CHAT})
    assert got.status_code == 200, got.text
    body = got.json()
    prompt = chat_prompt_ids(tokenizer, [Message(m["role"], m["content"]) for m in CHAT[:-1]])
    ids = prompt + tokenizer.encode(CHAT[-1]["content"])
    assert body["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert body["reply_start"] == len(prompt)
    assert (body["layers"], body["heads"]) == (model.config.n_layers, model.config.n_heads)
    # The prompt part is what /v1/chat/completions reads for the same conversation.
    chat = client.post(
        "/v1/chat/completions", headers=AUTH, json={"messages": CHAT[:-1], "max_tokens": 1}
    )
    assert chat.json()["usage"]["prompt_tokens"] == len(prompt)

    rollout, last = direct(model, ids)
    np.testing.assert_allclose(body["rollout"], rollout, atol=6e-5)
    np.testing.assert_allclose(body["last_layer"], last, atol=6e-5)
    for matrix in (body["rollout"], body["last_layer"]):
        np.testing.assert_allclose(np.sum(matrix, axis=1), 1, atol=len(ids) * 6e-5)
        assert np.all(np.triu(matrix, 1) == 0)  # a causal model never looks ahead


def test_a_prompt_is_read_as_its_tokens(client: TestClient, tokenizer: Tokenizer, model):
    body = client.post("/v1/attention", headers=AUTH, json={"prompt": "the quick fox"}).json()
    ids = tokenizer.encode("the quick fox")
    assert body["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert body["reply_start"] == len(ids)
    np.testing.assert_allclose(body["rollout"], direct(model, ids)[0], atol=6e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a", "messages": CHAT}, "messages"),
        ({}, "messages"),
        ({"prompt": ""}, "prompt"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"prompt": 3}, "prompt"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client: TestClient, body: dict, param: str):
    got = client.post("/v1/attention", headers=AUTH, json=body)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param), error


def test_a_conversation_longer_than_the_context_is_refused(client: TestClient):
    long = [{"role": "user", "content": "the quick brown fox " * 60}]
    got = client.post("/v1/attention", headers=AUTH, json={"messages": long})
    assert got.status_code == 400
    assert got.json()["error"]["code"] == "context_length_exceeded"
    assert got.json()["error"]["param"] == "messages"


def test_the_api_key_guards_it_and_the_schema_documents_it(client: TestClient):
    got = client.post("/v1/attention", json={"prompt": "the"})
    assert got.status_code == 401 and got.json()["error"]["code"] == "invalid_api_key"
    wrong = client.post("/v1/attention", headers={"Authorization": "Bearer no"}, json={})
    assert wrong.status_code == 401
    operation = client.get("/openapi.json").json()["paths"]["/v1/attention"]["post"]
    assert {"200", "400", "401"} <= set(operation["responses"])
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AttentionRequest"
    )
