"""Chat templates: rendering conversations to text, and encoding them with a response-only
loss mask.

This module owns how a conversation becomes the token ids and labels instruction tuning trains on.
A chat template is Jinja source stored with the tokenizer (`Tokenizer.chat_template`), the form
transformers and the Hugging Face Hub use; it is untrusted code, so it is rendered in Jinja's
immutable sandbox with the same settings as transformers' `apply_chat_template` (the same
template gives the same text in both), any access the sandbox flags is refused outright, and its
time and the size of what it builds are bounded (`graft.data.template_sandbox`).
`encode_conversation` labels what the model must learn to write: each assistant turn's text
after the generation prompt, through its end-of-turn token, so the model learns to stop.
`encode_prompt` gives the ids a reply is asked for with, encoded piece by piece the same way, so
`graft eval --task generate`, `graft chat` and the server prompt exactly as training framed the
reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

from graft.data.inputs import leading_ids
from graft.data.records import IGNORE_INDEX, Conversation, Message
from graft.data.template_sandbox import TemplateBoundError, compile_template, render_template
from graft.data.tokenizer import EOT, Tokenizer
from graft.errors import ConfigError, DataError, TokenizerError


class NotAppendedError(DataError):
    """A chat template whose rendering of more messages does not extend that of fewer: it cannot
    be cut into the pieces training labels, so its conversations are encoded whole."""


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "EncodedConversation",
    "encode_conversation",
    "encode_prompt",
    "render_chat",
]

#: graft's template, ChatML in spirit: `<|role|>\n{content}{eos_token}\n` per turn, and
#: `<|assistant|>\n` as the generation prompt. Role names must be one of the three graft reads.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ "
    "'; expected system, user or assistant') }}\n"
    "{%- endif -%}\n"
    "{{ '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ eos_token ~ '\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{ '<|assistant|>\\n' }}\n"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids and their labels (the id where trained, IGNORE_INDEX elsewhere), unshifted:
    the loss compares position t's prediction with label t + 1, as for any causal LM."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _one_line(message: str | None) -> str:
    return " ".join((message or "no message").split())


def render_chat(
    template: str,
    messages: Sequence[Message | Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """The text `template` makes of `messages` (and of the generation prompt, when asked).

    The template sees `messages` as a list of `{"role", "content"}` dicts, `add_generation_prompt`
    and the tokenizer's special tokens by role (`bos_token`, `eos_token`, ...: a tokenizer's
    `special_tokens_map`; `eos_token` is graft's end of text when not given), as under
    transformers: a Llama template opens with `{{ bos_token }}`. A template that does not parse,
    raises (through `raise_exception` or an error of its own), touches what the sandbox forbids
    or crosses its bounds on time and size raises DataError.
    """
    if not isinstance(template, str):
        raise ConfigError(
            f"a chat template must be a string of Jinja source, got {type(template).__name__}"
        )
    try:
        compiled = compile_template(template)
    except TemplateSyntaxError as exc:
        raise DataError(f"chat template line {exc.lineno}: {_one_line(exc.message)}") from None
    turns = [
        {"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m)
        for m in messages
    ]
    try:
        return render_template(
            compiled,
            messages=turns,
            add_generation_prompt=add_generation_prompt,
            **{"eos_token": EOT, **(special_tokens or {})},
        )
    except TemplateBoundError:
        raise
    except SecurityError as exc:
        raise DataError(f"chat template refused by the sandbox: {_one_line(str(exc))}") from None
    except TemplateError as exc:
        raise DataError(f"chat template failed: {_one_line(exc.message)}") from None
    except Exception as exc:  # the template is foreign code: whatever it raises is its problem
        raise DataError(
            f"chat template failed: {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None


def turn_end(tokenizer: Tokenizer, template: str) -> str | None:
    """The special token `template` closes an assistant turn with, where that is not the
    tokenizer's eos (a Llama 3 base model's template closes turns with <|eot_id|>, its eos is
    <|end_of_text|>); None where the eos closes it, or no special token does. A chat model
    fine-tuned with that template must learn to stop on it, and be stopped by it."""
    tokens = tokenizer.special_tokens_map
    probe = [Message("user", "Hi"), Message("assistant", "Hello")]
    try:
        prompt = render_chat(template, probe[:1], add_generation_prompt=True, special_tokens=tokens)
        whole = render_chat(template, probe, special_tokens=tokens)
    except DataError:
        return None  # the template's own errors are reported where conversations are encoded
    if not whole.startswith(prompt):
        return None
    reply = whole[len(prompt) :]
    eos = tokens.get("eos_token")
    if eos is not None and eos in reply:
        return None
    specials = [
        t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special
    ]
    last = max(((reply.rfind(t), t) for t in specials if t in reply), default=None)
    return None if last is None else last[1]


def _segments(
    template: str,
    messages: Sequence[Message],
    special_tokens: Mapping[str, str],
    where: str,
    *,
    add_generation_prompt: bool = False,
    learn_to_stop: bool = True,
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces, in order; with
    `add_generation_prompt`, ending with the generation prompt after the last message.
    With `learn_to_stop` (training) every assistant turn must end with the end-of-turn token;
    a prompt only reads earlier turns, which may end otherwise (a Llama 3 base model's
    template closes turns with <|eot_id|>, its eos is <|end_of_text|>).

    Rendering the first i + 1 messages adds message i's text to the rendering of the first i.
    For an assistant turn, the generation prompt of the first i messages is what a model sees
    before it writes; the rest, up to and including the last end-of-turn token, is what it
    writes. This needs a template that renders prefixes as prefixes, which chat templates do
    (generation relies on it); one that does not is reported. `special_tokens` holds the
    end-of-turn token as `eos_token`.
    """
    eos = special_tokens["eos_token"]

    def render(count: int, add_generation_prompt: bool = False) -> str:
        try:
            return render_chat(
                template,
                messages[:count],
                add_generation_prompt=add_generation_prompt,
                special_tokens=special_tokens,
            )
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    def prompt_after(count: int, done: str) -> str:
        """The generation prompt after `count` messages, which must extend their rendering
        `done`: one rule for the prompt a reply is trained after and the one it is asked for."""
        prompt = render(count, add_generation_prompt=True)
        if not prompt.startswith(done):
            raise NotAppendedError(
                f"{where}: the chat template's generation prompt after {count} messages does not "
                "start with their rendering; expected it to be appended"
            )
        return prompt

    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if eos in message.content:
            # It would encode as the real token: a reply that teaches stopping midway, or a user
            # turn that fakes a turn boundary.
            raise DataError(
                f"{where}: message {i} ({message.role}) contains the end-of-turn token {eos!r} "
                "in its text; remove it from the data"
            )
        full = render(i + 1)
        if not full.startswith(done):
            raise NotAppendedError(
                f"{where}: the chat template's rendering of {i + 1} messages does not start with "
                f"its rendering of {i}; expected each turn to be appended"
            )
        if message.role != "assistant":
            pieces.append((full[len(done) :], False))
            done = full
            continue
        prompt = prompt_after(i, done)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template's generation prompt after {i} messages is not where "
                f"assistant message {i} begins; expected the assistant turn to start with it"
            )
        reply = full[len(prompt) :]
        end = reply.rfind(eos)
        if end >= 0:
            end += len(eos)
        elif learn_to_stop:
            raise DataError(
                f"{where}: the chat template emits no end-of-turn token {eos!r} after assistant "
                f"message {i}; the model could not learn to stop"
            )
        else:
            end = len(reply)  # the whole turn, which no prompt trains on
        pieces += [(prompt[len(done) :], False), (reply[:end], True), (reply[end:], False)]
        done = full
    if add_generation_prompt:
        pieces.append((prompt_after(len(messages), done)[len(done) :], False))
    return [(text, trained) for text, trained in pieces if text]


def encode_conversation(
    tokenizer: Tokenizer,
    template: str,
    conversation: Conversation,
    *,
    max_len: int,
    train_on_prompt: bool = False,
) -> EncodedConversation:
    """Token ids of `conversation` rendered with `template`, labelled for instruction tuning.

    Labels are the ids of every assistant reply (its text after the generation prompt) and of
    the end-of-turn token closing it (the tokenizer's eos token, which the template must emit);
    everything else is IGNORE_INDEX, or labelled too with `train_on_prompt`. Each rendered piece
    is encoded on its own, so a label boundary never falls inside a token. Longer sequences are
    cut to `max_len` from the end (the start kept) and flagged `truncated` for the caller to
    count; a cut can leave a last reply without its end-of-turn token, or no label at all. Text
    past the cut is not encoded (`graft.data.inputs.leading_ids`), so a huge reply costs no more
    than a short one.
    A message whose text holds the end-of-turn token itself raises DataError.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"max_len must be an integer >= 1, got {max_len!r}")
    eos = tokenizer.special_tokens_map.get("eos_token")
    if eos is None:
        raise TokenizerError(
            "the tokenizer has no eos token; chat training needs one as the end-of-turn token"
        )
    input_ids: list[int] = []
    labels: list[int] = []
    tokens, where = tokenizer.special_tokens_map, conversation.source
    for text, trained in _segments(template, conversation.messages, tokens, where):
        if len(input_ids) > max_len:
            break  # already cut: the rest is dropped unseen
        ids = leading_ids(tokenizer, text, max_len - len(input_ids))
        input_ids += ids
        labels += ids if trained or train_on_prompt else [IGNORE_INDEX] * len(ids)
    truncated = len(input_ids) > max_len
    return EncodedConversation(
        input_ids=input_ids[:max_len], labels=labels[:max_len], truncated=truncated
    )


def encode_prompt(
    tokenizer: Tokenizer, template: str, messages: Sequence[Message], *, where: str
) -> list[int]:
    """The ids a model reads before it writes the assistant's reply to `messages`: the messages
    and the generation prompt rendered with `template`, each piece encoded on its own exactly as
    `encode_conversation` encodes it for training, so a model is asked for a reply in the very
    ids it was trained to answer. Nothing is cut (the caller decides what fits). `where` names
    the record in errors; a message holding the end-of-turn token raises DataError.
    """
    eos = tokenizer.special_tokens_map.get("eos_token")
    if eos is None:
        raise TokenizerError(
            "the tokenizer has no eos token; a chat prompt needs one as the end-of-turn token"
        )
    tokens = tokenizer.special_tokens_map
    pieces = _segments(
        template, messages, tokens, where, add_generation_prompt=True, learn_to_stop=False
    )
    return [token for text, _ in pieces for token in tokenizer.encode(text)]
