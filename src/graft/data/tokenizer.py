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
and friends are stable across runs; optional sentinels `<|sentinel_0|>`... for span corruption
follow them. Encoding never adds special tokens by itself.

`eot_id`, `mask_id` and the other ids are looked up by role (transformers' `eos_token`,
`mask_token`...): graft's tokens by default, a Hugging Face directory's own (`[MASK]`, `</s>`)
when it was loaded from one. Roles and chat template are saved in a `tokenizer_config.json`
beside `tokenizer.json` when they differ from graft's defaults (see `graft.data.hf_tokenizer`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

from graft.atomic_files import write_atomic
from graft.data.hf_tokenizer import (
    CONFIG_FILES,
    ROLES,
    TOKENIZER_FILE,
    TokenizerFiles,
    read_tokenizer_directory,
    read_tokenizer_json,
    write_tokenizer_config,
)
from graft.errors import TokenizerError

__all__ = [
    "CLS",
    "EOT",
    "GRAFT_SPECIAL_TOKENS_MAP",
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
    "sentinel_token",
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
#: The roles (transformers' names) of graft's special tokens. graft has no beginning-of-sequence
#: token: bos stays unset rather than borrowing another token's meaning.
GRAFT_SPECIAL_TOKENS_MAP: Mapping[str, str] = {
    "eos_token": EOT,
    "pad_token": PAD,
    "unk_token": UNK,
    "mask_token": MASK,
    "sep_token": SEP,
    "cls_token": CLS,
}

TokenizerKind = Literal["bpe", "wordpiece", "unigram", "bytes"]
KINDS: tuple[str, ...] = get_args(TokenizerKind)

_METASPACE = "\u2581"
_WORDPIECE_PREFIX = "##"


def sentinel_token(index: int) -> str:
    """The name of span-corruption sentinel `index`: `<|sentinel_0|>`, `<|sentinel_1|>`..."""
    return f"<|sentinel_{index}|>"


@functools.cache
def byte_to_unicode() -> tuple[str, ...]:
    """The GPT-2 byte-level alphabet: the printable character standing for each byte value.

    Bytes that are printable and not whitespace (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for
    themselves; the other 68 bytes are given the code points from 256 upwards, in byte order.
    This is the table `tokenizers`' ByteLevel pre-tokenizer uses, so ids built on it line up.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    shifted = iter(range(256, 512))
    return tuple(chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256))


def _special_added_tokens(sentinels: int) -> list[AddedToken]:
    # normalized=False: a special token is matched in the raw text, before any normaliser
    # could alter it (the BERT normaliser would otherwise see "<|mask|>" as punctuation).
    names = [*SPECIAL_TOKENS, *(sentinel_token(i) for i in range(sentinels))]
    return [AddedToken(token, special=True, normalized=False) for token in names]


def _check_sentinels(sentinels: int) -> None:
    if isinstance(sentinels, bool) or not isinstance(sentinels, int) or sentinels < 0:
        raise TokenizerError(f"sentinels must be an integer >= 0, got {sentinels!r}")


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


def _component_types(value: object) -> set[str]:
    """Every "type" named in a serialised normaliser / pre-tokenizer / decoder, nested ones too."""
    if isinstance(value, dict):
        found = {value["type"]} if isinstance(value.get("type"), str) else set()
        return found.union(*(_component_types(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_component_types(v) for v in value))
    return set()


def _word_start_rule(backend: tokenizers.Tokenizer) -> Callable[[str], bool]:
    """Whether a token begins a word, judged from how this tokenizer marks word boundaries."""
    model = backend.model
    if isinstance(model, models.WordPiece):
        prefix = model.continuing_subword_prefix
        return lambda token: not token.startswith(prefix)
    parts = json.loads(backend.to_str())
    pipeline = [parts.get(key) for key in ("normalizer", "pre_tokenizer", "decoder")]
    types = _component_types(pipeline)
    if "ByteLevel" in types:
        space = byte_to_unicode()[ord(" ")]
        return lambda token: token.startswith(space)
    # SentencePiece-style: a Metaspace step, or a Replace(" ", "▁") normaliser (Llama 2).
    if "Metaspace" in types or _METASPACE in json.dumps(pipeline, ensure_ascii=False):
        return lambda token: token.startswith(_METASPACE)
    subword_prefix: str | None = getattr(model, "continuing_subword_prefix", None)
    if subword_prefix:
        return lambda token: not token.startswith(subword_prefix)
    raise TokenizerError(
        f"cannot tell which {type(model).__name__} tokens start a word: the tokenizer has no "
        "byte-level, metaspace or continuing-subword marker; whole-word masking needs one"
    )


class Tokenizer:
    """A graft tokenizer: a `tokenizers.Tokenizer` (kept as `.backend`) plus graft's rules.

    Encoding never adds special tokens (causal-LM data adds EOT between documents itself),
    and padding and truncation are always off: batches are built by objectives.
    `special_tokens_map` gives each role (transformers' names: `eos_token`, `mask_token`...) its
    token; graft's own tokens when not given. `chat_template` is a Jinja template or None.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        kind: TokenizerKind | None = None,
        *,
        special_tokens_map: Mapping[str, str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        # A tokenizer.json from elsewhere may switch these on; they would silently change ids.
        backend.no_padding()
        backend.no_truncation()
        self._kind: TokenizerKind = kind if kind is not None else _infer_kind(backend)
        roles = dict(GRAFT_SPECIAL_TOKENS_MAP if special_tokens_map is None else special_tokens_map)
        unknown = sorted(set(roles) - set(ROLES))
        if unknown or not all(isinstance(token, str) for token in roles.values()):
            raise TokenizerError(
                f"special_tokens_map: roles must be some of {', '.join(ROLES)} with "
                f"token strings; got {roles!r}"
            )
        self._roles = roles
        self.chat_template = chat_template
        self._word_starts: np.ndarray | None = None

    # -- files ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        """Load a tokenizer file or directory.

        A directory (a graft checkpoint or prepared data, or a Hugging Face model) is read with
        its roles and chat template: tokenizer.json, or else a BERT vocab.txt, plus
        tokenizer_config.json, special_tokens_map.json and chat_template.jinja where present
        (`graft.data.hf_tokenizer`). A file named tokenizer.json is read the same way, as part of
        its directory; a file with another name is read alone, with graft's roles.
        """
        path = Path(path)
        if path.is_dir():
            files = read_tokenizer_directory(path)
        elif path.name == TOKENIZER_FILE and path.is_file():
            files = read_tokenizer_directory(path.parent)
        else:
            files = TokenizerFiles(read_tokenizer_json(path), path)
        try:
            return cls(
                files.backend,
                special_tokens_map=files.special_tokens_map,
                chat_template=files.chat_template,
            )
        except TokenizerError as exc:
            raise TokenizerError(f"{files.source}: {exc}") from exc

    def save(self, directory: Path | str) -> Path:
        """Write `directory/tokenizer.json` atomically and return its path.

        Roles other than graft's, or a chat template, go to a tokenizer_config.json beside it.
        It is also written where tokenizer config files already are, so that none of them goes
        on describing another tokenizer (`graft.data.hf_tokenizer.write_tokenizer_config`).
        """
        directory = Path(directory)
        path = write_atomic(directory / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        if (
            self._roles != GRAFT_SPECIAL_TOKENS_MAP
            or self.chat_template is not None
            or any((directory / name).exists() for name in CONFIG_FILES)
        ):
            write_tokenizer_config(
                directory, self.backend, self.special_tokens_map, self.chat_template
            )
        return path

    # -- encoding ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in the text map to their single id."""
        # Through the batch call, which lets go of the GIL (`encode` holds it throughout): the
        # server tokenizes in worker threads, and a million-word prompt would otherwise stop
        # every other request for seconds. The same ids, and no slower for a short text.
        return next(self._encode_many([text])).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on all cores."""
        return [encoding.ids for encoding in self._encode_many(texts)]

    def encode_batch_arrays(
        self, texts: Sequence[str], dtype: np.dtype | type = np.uint32
    ) -> list[np.ndarray]:
        """Like `encode_batch` but one numpy array per text.

        Each encoding is converted and dropped in turn, so at most one text's ids exist as
        Python ints at a time; shard preparation relies on this to keep memory flat.

        A byte tokenizer's ids are the text's UTF-8 bytes unless an added token (a special
        token, a sentinel) occurs in the text; such texts skip `tokenizers` altogether, which
        would build an Encoding (a token string, offsets, masks) for every byte: the same ids,
        about ten times faster.
        """
        texts = list(texts)
        added = self._byte_identity_added_tokens()
        fast = [None if added is None else _utf8_ids(text, added, dtype) for text in texts]
        # The other texts are encoded in one parallel batch, converted in order as they go.
        slow = self._encode_many([text for text, ids in zip(texts, fast) if ids is None])
        return [np.array(next(slow).ids, dtype=dtype) if ids is None else ids for ids in fast]

    def _byte_identity_added_tokens(self) -> list[str] | None:
        """The added tokens' strings when encoding maps every other text to its UTF-8 bytes, id
        for id (graft's byte tokenizer as built or loaded); else None.

        Checked on every call rather than cached, as `.backend` can be changed in place: a few
        attribute reads, and the vocabulary only when it is a byte tokenizer's.
        """
        backend = self.backend
        pre = backend.pre_tokenizer
        if not (
            self._kind == "bytes"
            # Each of these would change ids: a normaliser or prefix space alters the text,
            # word splitting, merges or suffixes alter the tokens, padding adds ids.
            and backend.normalizer is None
            and backend.post_processor is None
            and backend.padding is None
            and backend.truncation is None
            and isinstance(pre, pre_tokenizers.ByteLevel)
            and not pre.add_prefix_space
            and not pre.use_regex
            and isinstance(backend.model, models.BPE)
            and backend.model.dropout is None
            and not backend.model.continuing_subword_prefix
            and not backend.model.end_of_word_suffix
        ):
            return None
        # 256 tokens, each byte's character at the byte's id, leave no room for merges.
        base = backend.get_vocab(with_added_tokens=False)
        alphabet = byte_to_unicode()
        if len(base) != 256 or any(base.get(char) != byte for byte, char in enumerate(alphabet)):
            return None
        return [token.content for token in backend.get_added_tokens_decoder().values()]

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

    def add_pad_token(self) -> int:
        """Add graft's pad token (for a tokenizer that has none, e.g. GPT-2's) and return its id."""
        self.backend.add_special_tokens([AddedToken(PAD, special=True, normalized=False)])
        self._roles["pad_token"] = PAD
        self._word_starts = None
        pad_id = self.backend.token_to_id(PAD)
        assert pad_id is not None  # just added
        return pad_id

    def set_role(self, role: str, token: str) -> None:
        """Give `role` (transformers' name: `eos_token`...) to `token`, a token of the
        vocabulary: a chat fine-tune whose template ends turns with another token than eos makes
        that token its eos."""
        if role not in ROLES or self.token_to_id(token) is None:
            raise TokenizerError(f"{role}: {token!r} is not a token of this tokenizer")
        self._roles[role] = token
        self._word_starts = None

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """role -> token for each role whose token is in the vocabulary (transformers' names)."""
        return {
            role: token
            for role, token in self._roles.items()
            if self.token_to_id(token) is not None
        }

    def _role_id(self, role: str) -> int | None:
        token = self._roles.get(role)
        return None if token is None else self.token_to_id(token)

    @property
    def eot_id(self) -> int | None:
        """The document separator: graft's <|endoftext|>; for a Hugging Face tokenizer its eos
        token, or its sep token when it has no eos (BERT)."""
        eos = self._role_id("eos_token")
        return eos if eos is not None else self._role_id("sep_token")

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos_token")

    @property
    def opens_with_bos(self) -> bool:
        """Whether the tokenizer's own post-processor frames a single text as `bos + text` and
        nothing more (Llama's `<s>`, Llama 3's `<|begin_of_text|>`): its model was pre-trained
        on texts that start with it, so every text a decoder reads here does too
        (`graft.data.inputs.input_frame`). BERT's and RoBERTa's frames, with a token after the
        text, are the encoders' own frame; graft's tokenizers add nothing.

        Read from the backend on every call, which `.backend` changes in place would alter."""
        bos = self.bos_id
        if bos is None:
            return False
        probe = "a"
        bare = self.backend.encode(probe, add_special_tokens=False).ids
        framed = self.backend.encode(probe, add_special_tokens=True).ids
        return framed == [bos, *bare]

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad_token")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask_token")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep_token")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls_token")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk_token")

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of the span-corruption sentinels <|sentinel_0|>, <|sentinel_1|>... in order (as
        many as exist from 0 on), else of T5's <extra_id_0>...; empty when there are none."""
        for name in (sentinel_token, "<extra_id_{}>".format):
            ids: list[int] = []
            while (token_id := self.token_to_id(name(len(ids)))) is not None:
                ids.append(token_id)
            if ids:
                return ids
        return []

    def word_start_ids(self) -> np.ndarray:
        """Read-only bool array over ids: True where the token begins a word (whole-word masking).

        Byte-level BPE and bytes: the token starts with the byte-level space `Ġ`. Metaspace
        (Unigram, SentencePiece-style BPE): it starts with `▁`. WordPiece: it does not start
        with the continuing-subword prefix (`##`), so punctuation is a word of its own. Special
        tokens always start one. Decided per token, without context: a text's first word has no
        leading space, so callers also treat the first position as a start.
        """
        if self._word_starts is None:
            starts = np.zeros(self.vocab_size, dtype=bool)
            begins = _word_start_rule(self.backend)
            for token, token_id in self.backend.get_vocab(with_added_tokens=True).items():
                if token_id < len(starts) and begins(token):
                    starts[token_id] = True
            for token_id, added in self.backend.get_added_tokens_decoder().items():
                if added.special and token_id < len(starts):
                    starts[token_id] = True
            starts.setflags(write=False)  # cached and shared: nobody may change it
            self._word_starts = starts
        return self._word_starts

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical serialisation; shards and checkpoints record it."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    @property
    def encoding_sha256(self) -> str:
        """Hex SHA-256 of what graft encodes with, the test of "the same ids for a model": the
        serialisation without its post-processor, which `encode` never runs, and the one thing
        graft reads from it, whether texts open with bos. An export that gives an encoder's
        tokenizer BERT's [CLS] $A [SEP] template (for transformers' sake) encodes the same."""
        parts = json.loads(self.backend.to_str())
        parts["post_processor"] = None
        canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{canonical}|bos:{self.opens_with_bos}".encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _utf8_ids(text: str, added: Sequence[str], dtype: np.dtype | type) -> np.ndarray | None:
    """A byte tokenizer's ids for `text`, or None where `tokenizers` must encode it: an added
    token occurs in it (it would be matched as one id), or it is not valid Unicode (a lone
    surrogate, which `tokenizers` rejects in its own way)."""
    if any(token in text for token in added):
        return None
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return np.frombuffer(raw, dtype=np.uint8).astype(dtype)


def bytes_tokenizer(sentinels: int = 0) -> Tokenizer:
    """The byte tokenizer: id == UTF-8 byte value for 0..255, special tokens at 256..261, then
    `sentinels` span-corruption sentinels from 262.

    Built as a BPE model with no merges over the byte-level alphabet, so it saves and loads as
    an ordinary `tokenizer.json` that any `tokenizers` user can read.
    """
    vocab = {char: byte for byte, char in enumerate(byte_to_unicode())}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting is needed when every byte is its own token.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    _check_sentinels(sentinels)
    backend.add_special_tokens(_special_added_tokens(sentinels))
    return Tokenizer(backend, kind="bytes")


def _min_vocab_size(kind: TokenizerKind, sentinels: int) -> tuple[int, str]:
    """The smallest vocab_size that can be trained, and why."""
    # Byte-level BPE holds all 256 bytes plus the specials before its first merge; the
    # others need at least one real token next to the specials.
    specials = len(SPECIAL_TOKENS) + sentinels
    why = f"{len(SPECIAL_TOKENS)} special tokens" + (
        f" + {sentinels} sentinels" if sentinels else ""
    )
    if kind == "bpe":
        return 256 + specials, f"256 bytes + {why}"
    return specials + 1, f"{why} + 1"


def _untrained(
    kind: TokenizerKind, vocab_size: int, min_frequency: int, show_progress: bool, sentinels: int
) -> tuple[tokenizers.Tokenizer, trainers.Trainer]:
    # What every trainer takes; each kind adds its own options.
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "special_tokens": _special_added_tokens(sentinels),
        "show_progress": show_progress,
    }
    trainer: trainers.Trainer
    if kind == "bpe":
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            min_frequency=min_frequency, initial_alphabet=alphabet, **common
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
            min_frequency=min_frequency, continuing_subword_prefix=_WORDPIECE_PREFIX, **common
        )
    else:  # unigram
        backend = tokenizers.Tokenizer(models.Unigram())
        # prepend_scheme="never": no invented leading space, so decoding gives back the text.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=_METASPACE, prepend_scheme="never", split=True
        )
        backend.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="never")
        # The Unigram trainer has no min_frequency; it prunes by likelihood instead.
        trainer = trainers.UnigramTrainer(unk_token=UNK, **common)
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
    sentinels: int = 0,
) -> Tokenizer:
    """Train a tokenizer of `kind` on streamed `texts` (never held all at once).

    `vocab_size` counts the special tokens; the result can be smaller when the text is too
    small to learn that many tokens. `sentinels` adds that many span-corruption sentinels
    right after the six special tokens (ids 6.. in trained kinds). For `bytes`, nothing is
    trained and `vocab_size` is ignored: the vocabulary is always 256 bytes plus the specials.
    """
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    _check_sentinels(sentinels)
    if kind == "bytes":
        return bytes_tokenizer(sentinels)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    minimum, why = _min_vocab_size(kind, sentinels)
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer; it needs at least "
            f"{minimum} ({why})"
        )
    if min_frequency < 0:
        raise TokenizerError(f"min_frequency must be >= 0, got {min_frequency}")
    backend, trainer = _untrained(kind, vocab_size, min_frequency, show_progress, sentinels)
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
    names = [*SPECIAL_TOKENS, *(sentinel_token(i) for i in range(sentinels))]
    ids = [backend.token_to_id(token) for token in names]
    if ids != list(range(len(names))):
        # Our id stability promise rests on the trainers placing specials first; check it.
        raise TokenizerError(f"trained {kind} tokenizer put the special tokens at ids {ids}")
    return Tokenizer(backend, kind=kind)
