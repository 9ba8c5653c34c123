"""What the server says about the model it serves: its id, what it can do, its stop tokens,
its card.

Gathered once at start-up from the model, its tokenizer and the directory it came from, so the
routes never touch the file system. The card is the directory's README.md when it has one (a
Hugging Face export writes one); otherwise a short summary written from the config, stating only
what the files say.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from graft.checkpoint import trained_context
from graft.data.tokenizer import Tokenizer, byte_to_unicode
from graft.model.config import ModelConfig
from graft.model.convert.hf import stop_ids
from graft.model.transformer import LanguageModel

CARD_FILE = "README.md"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    config: ModelConfig
    parameters: int
    card: str
    stop_ids: frozenset[int]  # end-of-text / end-of-turn ids: generation ends after any of them
    created: int  # when the server started (OpenAI's `created`, seconds)
    source: Path | None = None  # the checkpoint or Hugging Face directory served
    # The ids a whole text may take (classify, qa, embeddings): the context the checkpoint's run
    # trained on (graft.checkpoint.trained_context), else the model's; None: the model's.
    trained_context: int | None = None

    @property
    def input_context(self) -> int:
        return self.trained_context or self.config.max_seq_len

    @property
    def kind(self) -> str:
        cfg = self.config
        if cfg.head == "span":
            return "question answering (span)"
        if cfg.head != "lm":
            return f"{cfg.head} classifier"
        return "encoder" if cfg.is_encoder else "causal LM"

    @property
    def a_kind(self) -> str:
        """The kind after its article, for messages: "an encoder", "a causal LM"."""
        return f"{'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind}"


def load_model_for_serving(path: Path, device: str) -> tuple[LanguageModel, Tokenizer, Path]:
    """The model, tokenizer and source directory (where its card and generation config are) of a
    checkpoint, run or Hugging Face directory."""
    from graft.checkpoint import load_model, model_source
    from graft.device import resolve_device

    model, tokenizer = load_model(path, device=resolve_device(device, what="--device"))
    return model, tokenizer, model_source(path)


def describe_model(
    model: LanguageModel, tokenizer: Tokenizer, source: Path | None, *, name: str, created: int
) -> ModelInfo:
    """The ModelInfo of a loaded model; `source` is the checkpoint or Hugging Face directory."""
    card = _read_card(source) or summary_card(model, tokenizer, name)
    return ModelInfo(
        name=name,
        config=model.config,
        parameters=sum(p.numel() for p in model.parameters()),
        card=card,
        stop_ids=stop_ids(tokenizer, source),
        created=created,
        source=source,
        trained_context=None if source is None else trained_context(source),
    )


def _read_card(source: Path | None) -> str | None:
    if source is None:
        return None
    try:
        return (source / CARD_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def summary_card(model: LanguageModel, tokenizer: Tokenizer, name: str) -> str:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    what = {
        "sequence": "A sequence classifier",
        "token": "A token classifier",
        "span": "An extractive question-answering model",
    }.get(
        cfg.head,
        "A bidirectional encoder" if cfg.is_encoder else "A causal language model",
    )
    lines = [
        f"# {name}",
        "",
        f"{what} with {params:,} parameters, served by graft. This checkpoint has no README.md; "
        "what follows is read from its config.",
        "",
        "## Architecture",
        "",
        f"- {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} attention heads ({cfg.kv_heads} key/value), "
        f"feed-forward {cfg.ff_dim}, {cfg.mlp} MLP, {cfg.norm}, {cfg.positions} positions",
        f"- context {cfg.max_seq_len} tokens, vocabulary {cfg.vocab_size}",
        f"- tokenizer: {tokenizer.kind}, {tokenizer.vocab_size} tokens; chat template: "
        f"{'its own' if tokenizer.chat_template else 'none (graft default used for chat)'}",
    ]
    if cfg.labels:
        lines += ["", "## Labels", "", ", ".join(cfg.labels)]
    return "\n".join(lines) + "\n"


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """One token's text as it reads inside a text (OpenAI's logprob `token`): decoded after a
    plain word and cut from it, since a decoder drops what opens a text. Decoded alone, a
    Metaspace (Llama 2) or WordPiece token that starts a word loses its space, and the logprobs
    of "a cat" would read "a", "cat". The one rule for every token string the server returns."""
    anchor = tokenizer.encode("a")
    if len(anchor) != 1 or token_id == anchor[0]:
        return tokenizer.decode([token_id])
    before = tokenizer.decode(anchor)
    both = tokenizer.decode([*anchor, token_id])
    return both[len(before) :] if both.startswith(before) else tokenizer.decode([token_id])


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The bytes one token stands for (OpenAI's logprob `bytes`), also for a token holding part of
    a UTF-8 character, which decodes alone to U+FFFD."""
    text = token_text(tokenizer, token_id)
    if "\ufffd" not in text:
        return text.encode("utf-8")
    piece = tokenizer.id_to_token(token_id) or ""
    if match := _BYTE_FALLBACK.fullmatch(piece):  # SentencePiece byte fallback: <0xE2>
        return bytes([int(match.group(1), 16)])
    byte_of = _byte_values()
    if piece and all(char in byte_of for char in piece):  # byte-level BPE: one character per byte
        return bytes(byte_of[char] for char in piece)
    return text.encode("utf-8")


@functools.cache
def _byte_values() -> dict[str, int]:
    return {char: byte for byte, char in enumerate(byte_to_unicode())}
