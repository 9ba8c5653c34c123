"""Tests for graft.data.chat: rendering chat templates in the sandbox, and the response-only loss
mask."""

from __future__ import annotations

import pytest

from graft.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    EncodedConversation,
    encode_conversation,
    render_chat,
)
from graft.data.records import IGNORE_INDEX, Conversation, Message
from graft.data.tokenizer import EOT, Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import ConfigError, DataError, TokenizerError

CHAT = Conversation(
    messages=(
        Message("system", "Answer briefly."),
        Message("user", "What is 2 + 3?"),
        Message("assistant", "5."),
        Message("user", "And 4 + 4?"),
        Message("assistant", "8, I think.\nSure."),
    ),
    source="chat.jsonl:7",
)
RENDERED = (
    "<|system|>\nAnswer briefly.<|endoftext|>\n"
    "<|user|>\nWhat is 2 + 3?<|endoftext|>\n"
    "<|assistant|>\n5.<|endoftext|>\n"
    "<|user|>\nAnd 4 + 4?<|endoftext|>\n"
    "<|assistant|>\n8, I think.\nSure.<|endoftext|>\n"
)


@pytest.fixture(scope="module", params=["bytes", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "bytes":
        return bytes_tokenizer()
    return train_tokenizer([RENDERED.replace(EOT, " ")] * 4, "bpe", 300, min_frequency=1)


def labelled_runs(tokenizer: Tokenizer, encoded: EncodedConversation) -> list[str]:
    """The texts of the maximal runs of labelled positions."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


# -- rendering ----------------------------------------------------------------------------------


def test_default_template_renders_each_turn_with_the_end_of_turn_token() -> None:
    assert render_chat(DEFAULT_CHAT_TEMPLATE, CHAT.messages) == RENDERED
    prompt = render_chat(DEFAULT_CHAT_TEMPLATE, CHAT.messages[:2], add_generation_prompt=True)
    assert prompt == RENDERED[: RENDERED.index("5.")] and prompt.endswith("<|assistant|>\n")
    dicts = [{"role": "user", "content": "Hi"}]
    assert (
        render_chat(DEFAULT_CHAT_TEMPLATE, dicts, special_tokens={"eos_token": "</s>"})
        == "<|user|>\nHi</s>\n"
    )


def test_default_template_refuses_an_unknown_role() -> None:
    with pytest.raises(
        DataError,
        match="chat template failed: unknown role tool; expected system, user or assistant",
    ):
        render_chat(DEFAULT_CHAT_TEMPLATE, [{"role": "tool", "content": "42"}])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",
    ],
)
def test_the_sandbox_refuses_unsafe_templates(template: str) -> None:
    with pytest.raises(
        DataError, match="chat template refused by the sandbox: access to attribute .* is unsafe"
    ):
        render_chat(template, CHAT.messages)


def test_template_errors_are_one_line_data_errors() -> None:
    with pytest.raises(DataError, match=r"chat template line 2: .*") as caught:
        render_chat("{% for m in messages %}\n{% endfor x %}", CHAT.messages)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="chat template failed: ZeroDivisionError"):
        render_chat("{{ 1 / 0 }}", CHAT.messages)
    with pytest.raises(ConfigError, match="must be a string of Jinja source"):
        render_chat(None, CHAT.messages)  # type: ignore[arg-type]


def test_rendering_matches_transformers_apply_chat_template(tokenizer: Tokenizer) -> None:
    import transformers

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token=EOT)
    # tojson and loopcontrols as transformers provides them, so Hub templates render alike.
    other = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{{ m | tojson }}\n{% endfor %}{% if add_generation_prompt %}[{{ eos_token }}]{% endif %}"
    )
    dicts = [{"role": m.role, "content": m.content + ' é"<>'} for m in CHAT.messages]
    for template in (DEFAULT_CHAT_TEMPLATE, other):
        for prompt in (False, True):
            for messages in (dicts, dicts[:2]):
                expected = hf.apply_chat_template(
                    messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
                )
                assert render_chat(template, messages, add_generation_prompt=prompt) == expected


# -- the loss mask ------------------------------------------------------------------------------


def test_only_responses_and_their_end_of_turn_tokens_are_labelled(tokenizer: Tokenizer) -> None:
    encoded = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=1024)
    assert not encoded.truncated and len(encoded.labels) == len(encoded.input_ids)
    assert tokenizer.decode(encoded.input_ids) == RENDERED
    assert labelled_runs(tokenizer, encoded) == [
        "5.<|endoftext|>",
        "8, I think.\nSure.<|endoftext|>",
    ]
    # Every assistant turn's end-of-turn token is trained on; no other turn's is.
    eot = tokenizer.eot_id
    assert [
        label == eot for token, label in zip(encoded.input_ids, encoded.labels) if token == eot
    ] == [False, False, True, False, True]


def test_segments_tokenize_like_the_generation_prompt(tokenizer: Tokenizer) -> None:
    # At inference the model continues the encoded generation prompt: training must see those ids.
    encoded = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=1024)
    prompt = tokenizer.encode(
        render_chat(DEFAULT_CHAT_TEMPLATE, CHAT.messages[:4], add_generation_prompt=True)
    )
    assert encoded.input_ids[: len(prompt)] == prompt
    assert (
        encoded.labels[len(prompt) - 1] == IGNORE_INDEX
        and encoded.labels[len(prompt)] != IGNORE_INDEX
    )


def test_train_on_prompt_labels_everything(tokenizer: Tokenizer) -> None:
    encoded = encode_conversation(
        tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=1024, train_on_prompt=True
    )
    assert encoded.labels == encoded.input_ids


def test_truncation_keeps_the_start_and_says_so(tokenizer: Tokenizer) -> None:
    full = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=1024)
    cut = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=20)
    assert cut.truncated and cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    exact = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=len(full.input_ids))
    assert not exact.truncated and exact == full


def test_a_huge_reply_is_cut_before_it_is_encoded(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = "a long answer, " * 20_000  # each character encoded would cost 100 bytes or more
    chat = Conversation((Message("user", "Go on."), Message("assistant", reply)), "c.jsonl:1")
    encode = tokenizer.encode
    whole = tokenizer.encode(reply)  # before the spy
    lengths: list[int] = []
    monkeypatch.setattr(tokenizer, "encode", lambda text: lengths.append(len(text)) or encode(text))
    cut = encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, chat, max_len=40)
    assert cut.truncated and len(cut.input_ids) == 40
    assert max(lengths) < 10_000
    monkeypatch.undo()
    prompt = tokenizer.encode("<|user|>\nGo on.<|endoftext|>\n<|assistant|>\n")
    assert cut.input_ids == (prompt + whole)[:40]


def test_another_template_labels_from_its_generation_prompt() -> None:
    # A Llama-3-like layout: header tokens, then the reply, then the end-of-turn token.
    template = (
        "{% for m in messages %}<{{ m['role'] }}>\n\n{{ m['content'] | trim }}{{ eos_token }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<assistant>\n\n{% endif %}"
    )
    tokenizer = bytes_tokenizer()
    chat = Conversation((Message("user", "Hi"), Message("assistant", "  Hello  ")), "x#0")
    encoded = encode_conversation(tokenizer, template, chat, max_len=64)
    assert tokenizer.decode(encoded.input_ids) == f"<user>\n\nHi{EOT}<assistant>\n\nHello{EOT}"
    assert labelled_runs(tokenizer, encoded) == [f"Hello{EOT}"]


def test_templates_that_cannot_be_masked_are_reported() -> None:
    tokenizer = bytes_tokenizer()
    no_eot = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(
        DataError,
        match=r"chat\.jsonl:7: the chat template emits no end-of-turn token "
        r"'<\|endoftext\|>' after assistant message 2",
    ):
        encode_conversation(tokenizer, no_eot, CHAT, max_len=64)
    reversed_turns = (
        "{% for m in messages | reverse %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    with pytest.raises(
        DataError,
        match=r"chat\.jsonl:7: .* rendering of 2 messages does not start with its "
        "rendering of 1",
    ):
        encode_conversation(tokenizer, reversed_turns, CHAT, max_len=64)
    failing = "{{ raise_exception('no system messages') }}"
    with pytest.raises(DataError, match=r"chat\.jsonl:7: chat template failed: no system messages"):
        encode_conversation(tokenizer, failing, CHAT, max_len=64)


def test_a_message_holding_the_end_of_turn_token_is_reported() -> None:
    chat = Conversation(
        (Message("user", "Hi"), Message("assistant", f"Hello{EOT}more")), "x.jsonl:3"
    )
    with pytest.raises(
        DataError, match=r"x\.jsonl:3: message 1 \(assistant\) contains the end-of-turn token"
    ):
        encode_conversation(bytes_tokenizer(), DEFAULT_CHAT_TEMPLATE, chat, max_len=64)


def test_bad_arguments() -> None:
    tokenizer = bytes_tokenizer()
    with pytest.raises(ConfigError, match="max_len must be an integer >= 1"):
        encode_conversation(tokenizer, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=0)
    no_eos = Tokenizer(tokenizer.backend, kind="bytes", special_tokens_map={"pad_token": "<|pad|>"})
    with pytest.raises(TokenizerError, match="no eos token"):
        encode_conversation(no_eos, DEFAULT_CHAT_TEMPLATE, CHAT, max_len=64)
