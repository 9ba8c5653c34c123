"""Tests for graft.data.tokenizer: round trips, special-token ids, files, validation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import pre_tokenizers, processors

from graft.data.tokenizer import (
    EOT,
    MASK,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    Tokenizer,
    byte_to_unicode,
    bytes_tokenizer,
    train_tokenizer,
)
from graft.errors import DataError, TokenizerError

MIXED = (
    "Hello, wörld! Ça va? naïve café 日本語のテキスト 中文 😀🚀👩‍💻\n"
    "def f(x):\n    return x**2  # code {'a': [1, 2]}\n\n\n"
    "\ttabs\t\tand   spaces   \r\n  trailing  "
)
CORPUS = [
    MIXED * 3,
    "The quick brown fox jumps over the lazy dog. " * 40,
    "héllo wörld 世界 🎉 " * 30,
]
TRAINED_KINDS = ("bpe", "wordpiece", "unigram")


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    return {
        kind: train_tokenizer(iter(CORPUS), kind=kind, vocab_size=400, min_frequency=1)
        for kind in TRAINED_KINDS
    }


@pytest.fixture(scope="module")
def every_kind(trained: dict[str, Tokenizer]) -> dict[str, Tokenizer]:
    return {**trained, "bytes": bytes_tokenizer()}


def random_text(seed: int, length: int = 400) -> str:
    rng = random.Random(seed)
    pools = [
        "abcxyz ",
        "ÀéîõüßÇñ",
        "日本語中文한국어",
        "😀🚀🎉👍🏽",
        "\n\t\r  ",
        "{}()[];=<>|&",
        "\u200b\u00a0\u2581",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(length))


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_byte_level_kinds_round_trip_any_text(every_kind: dict[str, Tokenizer], kind: str) -> None:
    tok = every_kind[kind]
    for text in [MIXED, "", " ", "\x00\x01\x7f", *(random_text(seed) for seed in range(5))]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id not in tok.encode(random_text(99))


def test_unigram_round_trips_text_of_seen_characters(trained: dict[str, Tokenizer]) -> None:
    tok = trained["unigram"]
    assert tok.decode(tok.encode(MIXED)) == MIXED
    # Unseen characters become <|unk|>: lossy there, and documented so.
    ids = tok.encode("a☃b")
    assert tok.unk_id in ids


def test_wordpiece_normalises_whitespace_and_isolates_cjk(trained: dict[str, Tokenizer]) -> None:
    tok = trained["wordpiece"]
    text = "Hello,  world!\nThe\tquick café 日本"
    # Cased BERT: case and accents kept; whitespace runs and newlines become one space;
    # CJK ideographs become separate words.
    assert tok.decode(tok.encode(text)) == "Hello, world! The quick café 日 本"
    assert tok.encode("☃") == [tok.unk_id]


def test_special_ids_are_stable(every_kind: dict[str, Tokenizer]) -> None:
    for kind, tok in every_kind.items():
        first = 256 if kind == "bytes" else 0
        assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(first, first + 6)), kind
        assert (tok.eot_id, tok.pad_id, tok.mask_id, tok.sep_id, tok.cls_id, tok.unk_id) == tuple(
            range(first, first + 6)
        )
        assert tok.kind == kind


def test_special_tokens_are_never_split(every_kind: dict[str, Tokenizer]) -> None:
    for kind, tok in every_kind.items():
        for special in SPECIAL_TOKENS:
            text = f"ab{special}cd {special}"
            ids = tok.encode(text)
            assert ids.count(tok.token_to_id(special)) == 2, (kind, special)
            if kind in ("bpe", "bytes", "unigram"):
                assert tok.decode(ids) == text
            assert special not in tok.decode(ids, skip_special_tokens=True)


def test_encode_adds_no_special_tokens(every_kind: dict[str, Tokenizer]) -> None:
    for tok in every_kind.values():
        specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
        assert not specials & set(tok.encode("hello world"))


def test_a_post_processor_in_the_file_adds_nothing(tmp_path: Path) -> None:
    tok = bytes_tokenizer()
    tok.backend.post_processor = processors.TemplateProcessing(
        single="<|cls|> $A <|sep|>", special_tokens=[("<|cls|>", 260), ("<|sep|>", 259)]
    )
    loaded = Tokenizer.load(tok.save(tmp_path))
    assert loaded.encode("hi") == [104, 105]


def test_encode_batch_matches_encode(every_kind: dict[str, Tokenizer]) -> None:
    texts = [MIXED, "", "x", random_text(3)]
    for tok in every_kind.values():
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
        arrays = tok.encode_batch_arrays(texts, dtype=np.uint16)
        assert [a.dtype for a in arrays] == [np.dtype(np.uint16)] * 4
        assert [a.tolist() for a in arrays] == tok.encode_batch(texts)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "bytes"])
def test_save_load_identity(every_kind: dict[str, Tokenizer], tmp_path: Path, kind: str) -> None:
    tok = every_kind[kind]
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    assert [p.name for p in path.parent.iterdir()] == [TOKENIZER_FILE]  # no temp file left
    for source in (path, path.parent):
        loaded = Tokenizer.load(source)
        assert loaded.kind == kind
        assert loaded.sha256 == tok.sha256
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(MIXED) == tok.encode(MIXED)
    # A second cycle changes nothing either, and saving again replaces the file in place.
    again = Tokenizer.load(Tokenizer.load(path).save(tmp_path / "again"))
    assert again.sha256 == tok.sha256
    assert tok.save(tmp_path / "tok") == path


def test_sha256_differs_between_tokenizers(trained: dict[str, Tokenizer]) -> None:
    hashes = {tok.sha256 for tok in trained.values()} | {bytes_tokenizer().sha256}
    assert len(hashes) == 4
    assert all(len(h) == 64 for h in hashes)
    assert bytes_tokenizer().sha256 == bytes_tokenizer().sha256


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=rf"no {TOKENIZER_FILE} in {tmp_path}"):
        Tokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match=r"missing\.json: no such file"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer")
    with pytest.raises(TokenizerError, match=r"bad\.json: not a valid tokenizer\.json"):
        Tokenizer.load(bad)


def test_byte_to_unicode_table() -> None:
    table = byte_to_unicode()
    assert len(set(table)) == 256
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"


def test_bytes_tokenizer_ids_are_byte_values() -> None:
    tok = bytes_tokenizer()
    assert tok.vocab_size == 262
    assert tok.encode("é") == list("é".encode())
    assert tok.decode(tok.encode("é")) == "é"
    text = "".join(chr(c) for c in range(1, 128)) + random_text(7)
    assert tok.encode(text) == list(text.encode("utf-8"))
    for byte in range(256):
        assert tok.id_to_token(byte) == byte_to_unicode()[byte]
    assert train_tokenizer(iter(["ignored"]), kind="bytes", vocab_size=1).sha256 == tok.sha256


def test_vocab_size_validation() -> None:
    too_small = r"vocab_size=261 is too small for a bpe tokenizer; it needs at least 262"
    with pytest.raises(TokenizerError, match=too_small):
        train_tokenizer(iter(CORPUS), kind="bpe", vocab_size=261)
    with pytest.raises(TokenizerError, match="too small for a unigram"):
        train_tokenizer(iter(CORPUS), kind="unigram", vocab_size=6)
    unknown = r"unknown tokenizer kind 'sentencepiece'; expected one of bpe"
    with pytest.raises(TokenizerError, match=unknown):
        train_tokenizer(iter(CORPUS), kind="sentencepiece", vocab_size=1000)  # type: ignore


def test_bpe_vocab_size_is_respected(trained: dict[str, Tokenizer]) -> None:
    assert 262 < trained["bpe"].vocab_size <= 400


def test_training_streams_and_keeps_input_errors() -> None:
    def texts() -> Iterator[str]:
        yield "some text " * 10
        raise DataError("corpus.jsonl:7: invalid JSON")

    with pytest.raises(DataError, match=r"corpus\.jsonl:7"):
        train_tokenizer(texts(), kind="bpe", vocab_size=300)
    with pytest.raises(TokenizerError, match="no text to train"):
        train_tokenizer(iter([]), kind="bpe", vocab_size=300)


def test_unsupported_model_is_refused(tmp_path: Path) -> None:
    model = tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    path = tmp_path / "wl.json"
    path.write_text(backend.to_str())
    with pytest.raises(TokenizerError, match=r"wl\.json: unsupported tokenizer model WordLevel"):
        Tokenizer.load(path)


def test_eot_constant() -> None:
    assert SPECIAL_TOKENS[0] == EOT == "<|endoftext|>" and SPECIAL_TOKENS[2] == MASK
