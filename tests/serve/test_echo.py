"""/v1/completions with `echo` (the prompt returned before the generated text, and with
`logprobs` each prompt token's logprob, as lm-evaluation-harness reads them), `max_tokens: 0`
(score only) and batches of prompts (one choice each, in order)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from graft.data.tokenizer import Tokenizer

from .conftest import CONTEXT, MODEL_NAME, Served
from .test_errors import assert_error

PROMPT = "the quick brown fox jumps over the river"


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app, raise_server_exceptions=False) as c:
        yield c


def complete(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/completions", json={"model": MODEL_NAME, **body})
    assert response.status_code == 200, response.text
    return response.json()


def direct_logprobs(served: Served, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, from one forward pass of the engine's model."""
    with torch.no_grad():
        logits = served.engine.model(torch.tensor([ids])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_echo_scores_every_prompt_token_after_the_first(
    client: TestClient, served: Served, tokenizer: Tokenizer
):
    ids = tokenizer.encode(PROMPT)
    body = complete(client, prompt=PROMPT, echo=True, max_tokens=0, logprobs=3)
    [choice] = body["choices"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(
        direct_logprobs(served, ids).tolist(), abs=1e-5
    )
    for logprob, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert 1 <= len(top) <= 3 and logprob <= max(top.values())
    # Each token's text begins at its offset in the echoed text.
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert PROMPT[offset : offset + len(token)] == token
    assert body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 0,
        "total_tokens": len(ids),
    }


def test_echo_then_generation_equals_the_plain_completion(client: TestClient, tokenizer: Tokenizer):
    plain = complete(client, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)["choices"][0]
    echoed = complete(client, prompt=PROMPT, echo=True, max_tokens=5, temperature=0, logprobs=2)
    choice = echoed["choices"][0]
    assert choice["text"] == PROMPT + plain["text"]
    n = len(tokenizer.encode(PROMPT))
    lp = choice["logprobs"]
    assert lp["tokens"][n:] == plain["logprobs"]["tokens"]
    assert lp["token_logprobs"][n:] == pytest.approx(plain["logprobs"]["token_logprobs"], abs=1e-5)
    assert lp["text_offset"][n:] == [len(PROMPT) + o for o in plain["logprobs"]["text_offset"]]
    assert echoed["usage"]["completion_tokens"] == len(plain["logprobs"]["tokens"])


def test_lm_eval_request_shape(client: TestClient, served: Served, tokenizer: Tokenizer):
    """What lm-eval's local-completions sends for a loglikelihood (token ids in a batch of one,
    echo, one new token, logprobs 1): the continuation's logprobs sit at [ctxlen:-1], the last
    entry being the generated token, and a greedy continuation's logprob is its top one."""
    context, continuation = tokenizer.encode("the quick brown"), tokenizer.encode(" fox jumps")
    ids = context + continuation
    body = complete(
        client, prompt=[ids], echo=True, max_tokens=1, temperature=0, logprobs=1, seed=1234
    )
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    expected = direct_logprobs(served, ids)[len(context) - 1 :].sum()
    assert sum(lp["token_logprobs"][len(context) : -1]) == pytest.approx(float(expected), abs=1e-4)
    for logprob, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert len(top) == 1 and logprob <= max(top.values())
    # The generated token is the greedy one: its logprob is the top one, exactly.
    assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())


def test_a_batch_of_prompts_answers_each_in_order(client: TestClient, tokenizer: Tokenizer):
    prompts = ["the river", "a small stone house", "the"]
    batch = complete(client, prompt=prompts, max_tokens=4, temperature=0)
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2]
    singles = [complete(client, prompt=p, max_tokens=4, temperature=0) for p in prompts]
    assert [c["text"] for c in batch["choices"]] == [s["choices"][0]["text"] for s in singles]
    assert batch["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in singles)
    ids = [tokenizer.encode(p) for p in prompts]
    by_ids = complete(client, prompt=ids, max_tokens=4, temperature=0)
    assert [c["text"] for c in by_ids["choices"]] == [c["text"] for c in batch["choices"]]


def test_echo_fills_the_whole_context_when_it_generates_nothing(
    client: TestClient, tokenizer: Tokenizer
):
    ids = (tokenizer.encode(PROMPT) * CONTEXT)[:CONTEXT]
    body = complete(client, prompt=ids, echo=True, max_tokens=0, logprobs=0)
    assert len(body["choices"][0]["logprobs"]["token_logprobs"]) == CONTEXT
    # A batch of scoring requests does not queue in the engine: more than its queue is fine.
    body = complete(client, prompt=[ids[:5]] * 10, echo=True, max_tokens=0, logprobs=1)
    assert len(body["choices"]) == 10


BAD = [
    ({"prompt": "x", "echo": True, "stream": True}, "echo", "unsupported"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt", "unsupported"),
    ({"prompt": [[1, 2], []], "echo": True, "max_tokens": 0}, "prompt[1]", None),
    ({"prompt": [[1], [10**6]]}, "prompt[1]", None),
    ({"prompt": ["a"] * 9, "max_tokens": 1}, "prompt", None),  # more than the queue's 8
    (
        {"prompt": [5] * (CONTEXT + 1), "echo": True, "max_tokens": 0},
        "prompt",
        "context_length_exceeded",
    ),
    ({"prompt": [5] * CONTEXT, "echo": True, "max_tokens": 1}, "prompt", "context_length_exceeded"),
    ({"prompt": [[5] * 3, [5] * CONTEXT], "echo": True}, "prompt[1]", "context_length_exceeded"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_echo_and_batch_requests_are_400_naming_the_field(
    client: TestClient, body: dict, param: str, code: str | None
):
    assert_error(client.post("/v1/completions", json=body), 400, param, code)


def test_offsets_of_tokens_that_split_a_character(client: TestClient, tokenizer: Tokenizer):
    """Byte-level tokens may hold part of a UTF-8 character: such a token's offset is where its
    character begins, so offsets never run past the text."""
    text = "déjà vu — naïve café"
    lp = complete(client, prompt=text, echo=True, max_tokens=0, logprobs=0)["choices"][0][
        "logprobs"
    ]
    offsets = lp["text_offset"]
    assert len(offsets) == len(tokenizer.encode(text)) > len(text.split())
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < len(text)


def test_an_opening_bos_is_scored_as_no_text_of_the_echoed_prompt():
    """A tokenizer whose post-processor opens every text with bos (Llama's) reads a text prompt
    after it: the echo lists it first, at offset 0, and every later token's text still begins
    at its offset in the echoed text."""
    from tokenizers import processors

    from graft.data.tokenizer import CLS, GRAFT_SPECIAL_TOKENS_MAP, bytes_tokenizer

    from .conftest import build

    plain = bytes_tokenizer()
    backend = plain.backend
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A", special_tokens=[(CLS, plain.token_to_id(CLS))]
    )
    opening = Tokenizer(backend, special_tokens_map={**GRAFT_SPECIAL_TOKENS_MAP, "bos_token": CLS})
    assert opening.opens_with_bos
    served = build(opening)
    try:
        with TestClient(served.app) as client:
            body = complete(client, prompt=PROMPT, echo=True, max_tokens=0, logprobs=1)
    finally:
        served.engine.stop()
    lp = body["choices"][0]["logprobs"]
    assert body["choices"][0]["text"] == PROMPT
    assert lp["tokens"][0] == CLS and lp["text_offset"][0] == 0
    for token, offset in zip(lp["tokens"][1:], lp["text_offset"][1:], strict=True):
        assert PROMPT[offset : offset + len(token)] == token
    assert body["usage"]["prompt_tokens"] == len(PROMPT.encode()) + 1


def test_logprob_tokens_keep_the_spaces_a_metaspace_decoder_drops_alone():
    """Decoded alone, a Llama 2 (Metaspace) token that starts a word loses its space: the
    logprob tokens of "a cat" read "a", "cat", chat's `bytes` joined lost every space, and the
    non-streamed text_offset drifted from the text."""
    from tokenizers import SentencePieceBPETokenizer
    from tokenizers import Tokenizer as Backend

    from .conftest import build

    trained = SentencePieceBPETokenizer()
    lines = ["the quick brown fox jumps over the lazy dog", "a cat sat on the mat"] * 50
    trained.train_from_iterator(lines, vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    roles = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = Tokenizer(Backend.from_str(trained.to_str()), special_tokens_map=roles)
    served = build(tokenizer)
    try:
        with TestClient(served.app) as client:
            body = {"max_tokens": 12, "temperature": 0, "logprobs": 2}
            text = complete(client, prompt="the quick brown", **body)["choices"][0]
            streamed = client.post(
                "/v1/completions",
                json={"model": MODEL_NAME, "prompt": "the quick brown", "stream": True, **body},
            )
            chat = client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL_NAME,
                    "messages": [{"role": "user", "content": "a cat"}],
                    "max_tokens": 12,
                    "temperature": 0,
                    "logprobs": True,
                },
            ).json()["choices"][0]
    finally:
        served.engine.stop()
    lp = text["logprobs"]
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text["text"][offset : offset + len(token)] == token, (lp, text["text"])
    assert any(token.startswith(" ") for token in lp["tokens"])  # a word start kept its space
    chunks = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    offsets = [
        o
        for c in chunks
        for ch in c["choices"]
        if ch["logprobs"]
        for o in ch["logprobs"]["text_offset"]
    ]
    assert offsets == lp["text_offset"]
    content = chat["message"]["content"]
    joined = bytes(b for item in chat["logprobs"]["content"] for b in item["bytes"])
    assert joined.decode("utf-8") == content
