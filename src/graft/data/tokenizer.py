"""Tokenizers: training, loading, saving and the special tokens every objective relies on.

This module owns graft's one tokenizer type, a thin wrapper over a Hugging Face
`tokenizers.Tokenizer` that always saves as a standard `tokenizer.json`. Four kinds exist:

- `bpe` (the default): byte-level BPE as in GPT-2. Every byte is in the base alphabet, so
  there is never an unknown token and `decode(encode(text)) == text` for any text.
- `bytes`: no training; ids 0..255 are the UTF-8 byte values themselves. Lossless.
- `wordpiece`: BERT-style, cased. Lossy by design: the BERT normaliser drops control
  characters, maps every whitespace character to a space and puts spaces around CJK
  ideographs; the BERT pre-tokenizer splits on whitespace and punctuation and drops the
  whitespace; the decoder joins words with single spaces (tidying spaces before common
  punctuation). A word with a character never seen in training becomes `<|unk|>`.
- `unigram`: SentencePiece-style with the Metaspace pre-tokenizer (spaces become `▁`). No
  normaliser and no prefix space are added, so it is lossless for text whose characters were
  all seen in training, except that a literal `▁` decodes as a space; unseen characters
  become `<|unk|>`.

The six special tokens have ids 0..5 in trained kinds and 256..261 in `bytes`, so `eot_id`
and friends are stable across runs. Encoding never adds special tokens by itself.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

from graft.atomic_files import write_atomic
from graft.errors import TokenizerError

__all__ = [
    "CLS",
    "EOT",
    "MASK",
    "PAD",
    "SEP",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "UNK",
    "Tokenizer",
    "TokenizerKind",
    "byte_to_unicode",
    "bytes_tokenizer",
    "train_tokenizer",
]

EOT = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
SEP = "<|sep|>"
CLS = "<|cls|>"
UNK = "<|unk|>"
#: The special tokens of every graft tokenizer, in id order.
SPECIAL_TOKENS: tuple[str, ...] = (EOT, PAD, MASK, SEP, CLS, UNK)

TokenizerKind = Literal["bpe", "wordpiece", "unigram", "bytes"]
KINDS: tuple[str, ...] = get_args(TokenizerKind)

TOKENIZER_FILE = "tokenizer.json"
_METASPACE = "\u2581"
_WORDPIECE_PREFIX = "##"


@functools.cache
def byte_to_unicode() -> tuple[str, ...]:
    """The GPT-2 byte-level alphabet: the printable character standing for each byte value.

    Bytes that are printable and not whitespace (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for
    themselves; the other 68 bytes are given the code points from 256 upwards, in byte order.
    This is the table `tokenizers`' ByteLevel pre-tokenizer uses, so ids built on it line up.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    table: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table.append(chr(byte))
        else:
            table.append(chr(256 + shifted))
            shifted += 1
    return tuple(table)


def _special_added_tokens() -> list[AddedToken]:
    # normalized=False: a special token is matched in the raw text, before any normaliser
    # could alter it (the BERT normaliser would otherwise see "<|mask|>" as punctuation).
    return [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]


def _infer_kind(backend: tokenizers.Tokenizer) -> TokenizerKind:
    model = backend.model
    if isinstance(model, models.WordPiece):
        return "wordpiece"
    if isinstance(model, models.Unigram):
        return "unigram"
    if isinstance(model, models.BPE):
        # The bytes tokenizer is the one BPE whose base vocabulary is exactly the byte
        # alphabet at ids equal to the byte values (a trained one has its specials first).
        if backend.get_vocab_size(with_added_tokens=False) == 256 and all(
            backend.token_to_id(char) == byte for byte, char in enumerate(byte_to_unicode())
        ):
            return "bytes"
        return "bpe"
    raise TokenizerError(
        f"unsupported tokenizer model {type(model).__name__}; graft supports BPE, WordPiece "
        "and Unigram"
    )


class Tokenizer:
    """A graft tokenizer: a `tokenizers.Tokenizer` (kept as `.backend`) plus graft's rules.

    Encoding never adds special tokens (causal-LM data adds EOT between documents itself),
    and padding and truncation are always off: batches are built by objectives.
    """

    def __init__(self, backend: tokenizers.Tokenizer, kind: TokenizerKind | None = None) -> None:
        self.backend = backend
        # A tokenizer.json from elsewhere may switch these on; they would silently change ids.
        backend.no_padding()
        backend.no_truncation()
        self._kind: TokenizerKind = kind if kind is not None else _infer_kind(backend)

    # -- files ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        """Load a `tokenizer.json` file, or the one inside the directory `path`."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            what = f"no {TOKENIZER_FILE} in {path}" if path.is_dir() else f"{path}: no such file"
            raise TokenizerError(f"{what}; train one with `graft tokenizer train` or fix the path")
        try:
            text = file.read_text(encoding="utf-8")
            backend = tokenizers.Tokenizer.from_str(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{file}: cannot read ({exc})") from exc
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"{file}: not a valid tokenizer.json ({reason})") from exc
        try:
            return cls(backend)
        except TokenizerError as exc:
            raise TokenizerError(f"{file}: {exc}") from exc

    def save(self, directory: Path | str) -> Path:
        """Write `directory/tokenizer.json` atomically and return its path."""
        return write_atomic(Path(directory) / TOKENIZER_FILE, self.backend.to_str(pretty=True))

    # -- encoding ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in the text map to their single id."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on all cores."""
        return [encoding.ids for encoding in self._encode_many(texts)]

    def encode_batch_arrays(
        self, texts: Sequence[str], dtype: np.dtype | type = np.uint32
    ) -> list[np.ndarray]:
        """Like `encode_batch` but one numpy array per text.

        Each encoding is converted and dropped in turn, so at most one text's ids exist as
        Python ints at a time; shard preparation relies on this to keep memory flat.
        """
        return [np.array(encoding.ids, dtype=dtype) for encoding in self._encode_many(texts)]

    def _encode_many(self, texts: Sequence[str]) -> Iterator[tokenizers.Encoding]:
        texts = list(texts)
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = encode(texts, add_special_tokens=False)
        # Hand encodings out from the end of a reversed list so each one is released as soon
        # as the caller has converted it, instead of all living until the batch is done.
        encodings.reverse()
        while encodings:
            yield encodings.pop()

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Special tokens are kept by default so that round trips are exact."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- vocabulary ----------------------------------------------------------------------

    @property
    def kind(self) -> TokenizerKind:
        return self._kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table needs this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def eot_id(self) -> int | None:
        return self.token_to_id(EOT)

    @property
    def pad_id(self) -> int | None:
        return self.token_to_id(PAD)

    @property
    def mask_id(self) -> int | None:
        return self.token_to_id(MASK)

    @property
    def sep_id(self) -> int | None:
        return self.token_to_id(SEP)

    @property
    def cls_id(self) -> int | None:
        return self.token_to_id(CLS)

    @property
    def unk_id(self) -> int | None:
        return self.token_to_id(UNK)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical serialisation; shards and checkpoints record it."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def bytes_tokenizer() -> Tokenizer:
    """The byte tokenizer: id == UTF-8 byte value for 0..255, special tokens at 256..261.

    Built as a BPE model with no merges over the byte-level alphabet, so it saves and loads as
    an ordinary `tokenizer.json` that any `tokenizers` user can read.
    """
    vocab = {char: byte for byte, char in enumerate(byte_to_unicode())}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting is needed when every byte is its own token.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_special_added_tokens())
    return Tokenizer(backend, kind="bytes")


def _min_vocab_size(kind: TokenizerKind) -> int:
    # Byte-level BPE holds all 256 bytes plus the specials before its first merge; the
    # others need at least one real token next to the specials.
    return 256 + len(SPECIAL_TOKENS) if kind == "bpe" else len(SPECIAL_TOKENS) + 1


def _untrained(
    kind: TokenizerKind, vocab_size: int, min_frequency: int, show_progress: bool
) -> tuple[tokenizers.Tokenizer, trainers.Trainer]:
    special = _special_added_tokens()
    if kind == "bpe":
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    elif kind == "wordpiece":
        backend = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK))
        # Cased BERT (as bert-base-cased): keep case and accents, isolate CJK ideographs.
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix=_WORDPIECE_PREFIX, cleanup=True)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special,
            continuing_subword_prefix=_WORDPIECE_PREFIX,
            show_progress=show_progress,
        )
    else:  # unigram
        backend = tokenizers.Tokenizer(models.Unigram())
        # prepend_scheme="never": no invented leading space, so decoding gives back the text.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=_METASPACE, prepend_scheme="never", split=True
        )
        backend.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="never")
        # The Unigram trainer has no min_frequency; it prunes by likelihood instead.
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            unk_token=UNK,
            show_progress=show_progress,
        )
    return backend, trainer


class _GuardedTexts:
    """Feeds texts to the Rust trainer; keeps the first error to re-raise it as itself.

    An exception raised inside `train_from_iterator`'s iterator would come back wrapped by
    the Rust side, losing its type (a DataError naming a bad file must stay a DataError).
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = iter(texts)
        self.error: Exception | None = None
        self.chars = 0

    def __iter__(self) -> _GuardedTexts:
        return self

    def __next__(self) -> str:
        if self.error is not None:
            raise StopIteration
        try:
            text = next(self._texts)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise StopIteration from None
        if not isinstance(text, str):
            self.error = TokenizerError(
                f"tokenizer training texts must be str, got {type(text).__name__}"
            )
            raise StopIteration
        self.chars += len(text)
        return text


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind,
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer of `kind` on streamed `texts` (never held all at once).

    `vocab_size` counts the special tokens; the result can be smaller when the text is too
    small to learn that many tokens. For `bytes`, nothing is trained and `vocab_size` is
    ignored: the vocabulary is always 256 bytes plus the specials.
    """
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "bytes":
        return bytes_tokenizer()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    minimum = _min_vocab_size(kind)
    if vocab_size < minimum:
        why = "256 bytes + 6 special tokens" if kind == "bpe" else "6 special tokens + 1"
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer; it needs at least "
            f"{minimum} ({why})"
        )
    if min_frequency < 0:
        raise TokenizerError(f"min_frequency must be >= 0, got {min_frequency}")
    backend, trainer = _untrained(kind, vocab_size, min_frequency, show_progress)
    guarded = _GuardedTexts(texts)
    try:
        backend.train_from_iterator(guarded, trainer=trainer)
    except Exception as exc:
        if guarded.error is not None:
            raise guarded.error from None
        raise TokenizerError(f"training a {kind} tokenizer failed: {exc}") from exc
    if guarded.error is not None:
        raise guarded.error
    if guarded.chars == 0:
        raise TokenizerError("no text to train the tokenizer on (every text was empty)")
    # Reload from our own serialisation: tokenizers' JSON reader can land a trained float
    # score one ulp away from the trained value, so without this the first save/load would
    # change `sha256`. One round trip reaches the fixed point.
    backend = tokenizers.Tokenizer.from_str(backend.to_str())
    ids = [backend.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        # Our id stability promise rests on the trainers placing specials first; check it.
        raise TokenizerError(f"trained {kind} tokenizer put the special tokens at ids {ids}")
    return Tokenizer(backend, kind=kind)

