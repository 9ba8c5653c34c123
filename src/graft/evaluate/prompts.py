"""What `graft eval --task generate` asks and expects: each record of its files as a prompt (its
text and token ids) and a reference. Source/target pairs are framed as `graft finetune seq2seq`
framed them, conversations as `instruct` did, each in the very ids training put before a reply
(`graft.data.chat.encode_prompt`), so a model is scored on the question it was trained to
answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.data.chat import DEFAULT_CHAT_TEMPLATE, encode_prompt, render_chat
from graft.data.pairs import TextPair, is_pair_file, pair_conversation, read_source_target
from graft.data.records import Conversation, read_conversations
from graft.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationExample:
    """One prompt, its token ids, and the text it should produce; `source` is `file:line`."""

    prompt: str
    reference: str
    source: str
    ids: tuple[int, ...]


def _chat_example(
    conversation: Conversation, tokenizer: Tokenizer, template: str
) -> GenerationExample:
    """The prompt is every turn before the last assistant reply, with the generation prompt, in
    the ids fine-tuning gave it (`encode_prompt`, training's own pieces)."""
    history = conversation.messages[:-1]
    ids = encode_prompt(tokenizer, template, history, where=conversation.source)
    # The same text; encode_prompt has already reported any problem rendering it.
    tokens = tokenizer.special_tokens_map
    prompt = render_chat(template, history, add_generation_prompt=True, special_tokens=tokens)
    return GenerationExample(
        prompt=prompt,
        reference=conversation.messages[-1].content,
        source=conversation.source,
        ids=tuple(ids),
    )


def _pair_example(pair: TextPair, tokenizer: Tokenizer) -> GenerationExample:
    """A source/target pair as `graft finetune seq2seq` framed it (`pair_conversation`) when the
    tokenizer has a chat template; for a base LM without one, the source text as it is."""
    if tokenizer.chat_template is None:
        ids = tuple(tokenizer.encode(pair.source_text))
        return GenerationExample(pair.source_text, pair.target_text, pair.source, ids)
    return _chat_example(pair_conversation(pair), tokenizer, tokenizer.chat_template)


def generation_examples(
    paths: Sequence[Path],
    tokenizer: Tokenizer,
    *,
    encoding: str = "utf-8",
    langs: tuple[str, str] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> tuple[list[GenerationExample], int]:
    """The first `limit` (all when None) prompts and references of the files, and the number of
    invalid records skipped (`skip_invalid`): source/target pairs (`_pair_example`), the parallel
    files of which each path is the prefix (with `langs`), or Alpaca or chat records."""
    records: list[TextPair | Conversation] = []
    skipped = 0
    for path in map(Path, paths):
        found: Sequence[TextPair | Conversation]
        if langs is not None or is_pair_file(path, encoding):
            found, bad = read_source_target(
                path, langs, encoding=encoding, skip_invalid=skip_invalid
            )
        else:
            found, bad = read_conversations(path, encoding=encoding, skip_invalid=skip_invalid)
        records += found
        skipped += bad
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    examples = [
        _pair_example(r, tokenizer)
        if isinstance(r, TextPair)
        else _chat_example(r, tokenizer, template)
        for r in records[:limit]
    ]
    return examples, skipped
