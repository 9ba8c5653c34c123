"""Tests for graft.data.tokenizer: round trips, special-token ids and roles, sentinels, word
starts, files, validation. Reading Hugging Face directories is tested against transformers in
tests/parity/test_hf_tokenizers.py."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from graft.data.tokenizer import (
    EOT,
    GRAFT_SPECIAL_TOKENS_MAP,
    MASK,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    Tokenizer,
    byte_to_unicode,
    bytes_tokenizer,
    sentinel_token,
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
    # No temp file left, and no tokenizer_config.json: graft's roles are the default.
    assert [p.name for p in path.parent.iterdir()] == [TOKENIZER_FILE]
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
    bytes_tokenizer().save(tmp_path / "dir")
    (tmp_path / "dir" / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(
        TokenizerError, match=r"tokenizer_config\.json: expected a JSON object, got list"
    ):
        Tokenizer.load(tmp_path / "dir")
    (tmp_path / "dir" / "tokenizer_config.json").write_text('{"mask_token": 3}')
    with pytest.raises(
        TokenizerError, match=r"tokenizer_config\.json: mask_token must be a token string"
    ):
        Tokenizer.load(tmp_path / "dir" / TOKENIZER_FILE)


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


# -- sentinels --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "bytes"])
def test_sentinels_follow_the_special_tokens(tmp_path: Path, kind: str) -> None:
    tok = train_tokenizer(iter(CORPUS), kind=kind, vocab_size=420, min_frequency=1, sentinels=3)
    first = 256 if kind == "bytes" else 0
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(
        range(first, first + 6)
    )  # not moved
    assert tok.sentinel_ids == [first + 6, first + 7, first + 8]
    assert [tok.id_to_token(i) for i in tok.sentinel_ids] == [
        "<|sentinel_0|>",
        "<|sentinel_1|>",
        "<|sentinel_2|>",
    ]
    assert tok.encode(f"a{sentinel_token(1)}b").count(first + 7) == 1
    assert tok.word_start_ids()[tok.sentinel_ids].all()
    # Found by name, so a saved tokenizer.json keeps them.
    assert Tokenizer.load(tok.save(tmp_path)).sentinel_ids == tok.sentinel_ids


def test_sentinel_ids_empty_without_and_t5_names_found(trained: dict[str, Tokenizer]) -> None:
    assert trained["bpe"].sentinel_ids == [] and bytes_tokenizer().sentinel_ids == []
    t5 = bytes_tokenizer()
    # T5 numbers its sentinels downwards from the top of the vocabulary.
    t5.backend.add_special_tokens([f"<extra_id_{i}>" for i in (1, 0)])
    assert t5.sentinel_ids == [263, 262]
    assert bytes_tokenizer(sentinels=2).vocab_size == 264


def test_sentinel_validation() -> None:
    with pytest.raises(TokenizerError, match="sentinels must be an integer >= 0, got -1"):
        bytes_tokenizer(sentinels=-1)
    too_small = r"it needs at least 107 \(6 special tokens \+ 100 sentinels \+ 1\)"
    with pytest.raises(TokenizerError, match=too_small):
        train_tokenizer(iter(CORPUS), kind="wordpiece", vocab_size=106, sentinels=100)


# -- word starts ------------------------------------------------------------------------------


def starts_of(tok: Tokenizer, text: str) -> list[tuple[str, bool]]:
    starts = tok.word_start_ids()
    return [(tok.id_to_token(i), bool(starts[i])) for i in tok.encode(text)]


def test_word_starts_byte_level(trained: dict[str, Tokenizer]) -> None:
    bpe, raw = trained["bpe"], bytes_tokenizer()
    for tok in (bpe, raw):
        starts = tok.word_start_ids()
        assert starts.dtype == np.bool_ and starts.shape == (tok.vocab_size,)
        assert starts[[tok.token_to_id(t) for t in SPECIAL_TOKENS]].all()
    # Bytes: only the space byte (and the specials) start a word.
    assert np.flatnonzero(raw.word_start_ids()).tolist() == [32, *range(256, 262)]
    for token, start in starts_of(bpe, "The quick brown fox jumps"):
        assert start == token.startswith("\u0120"), token
    assert any(start for _, start in starts_of(bpe, " quick"))


def test_word_starts_wordpiece_and_unigram(trained: dict[str, Tokenizer]) -> None:
    pieces = starts_of(trained["wordpiece"], "The quick brown fox, jumps")
    assert pieces and all(start == (not token.startswith("##")) for token, start in pieces)
    assert (",", True) in pieces
    uni = starts_of(trained["unigram"], "The quick brown fox jumps over")
    assert any(start for _, start in uni) and any(not start for _, start in uni)
    assert all(start == token.startswith("\u2581") for token, start in uni)


def test_word_starts_read_the_markers_of_foreign_tokenizers() -> None:
    # WordPiece with its own prefix; a Llama-2-style BPE marking spaces with a Replace normaliser.
    wp = tokenizers.Tokenizer(
        models.WordPiece(
            {"[UNK]": 0, "ab": 1, "@@c": 2}, unk_token="[UNK]", continuing_subword_prefix="@@"
        )
    )
    assert Tokenizer(wp).word_start_ids().tolist() == [True, True, False]
    llama = tokenizers.Tokenizer(
        models.BPE({"\u2581a": 0, "a": 1, "<unk>": 2}, [], unk_token="<unk>")
    )
    llama.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    llama.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback()])
    assert Tokenizer(llama).word_start_ids().tolist() == [True, False, False]
    plain = Tokenizer(tokenizers.Tokenizer(models.BPE({"a": 0}, [])))
    with pytest.raises(TokenizerError, match="cannot tell which BPE tokens start a word"):
        plain.word_start_ids()


def test_word_starts_are_cached_and_read_only(trained: dict[str, Tokenizer]) -> None:
    tok = trained["unigram"]
    assert tok.word_start_ids() is tok.word_start_ids()
    with pytest.raises(ValueError):
        tok.word_start_ids()[0] = False


# -- roles ------------------------------------------------------------------------------------


def test_graft_roles_are_the_default(every_kind: dict[str, Tokenizer]) -> None:
    for tok in every_kind.values():
        assert tok.special_tokens_map == GRAFT_SPECIAL_TOKENS_MAP
        assert (
            tok.eot_id == tok.token_to_id(EOT) and tok.bos_id is None and tok.chat_template is None
        )


def test_roles_and_chat_template_are_saved_beside_tokenizer_json(tmp_path: Path) -> None:
    backend = bytes_tokenizer(sentinels=1).backend
    roles = {
        "eos_token": "<|sep|>",
        "mask_token": "<|sentinel_0|>",
        "pad_token": "<|pad|>",
        "bos_token": "<|nope|>",
    }
    tok = Tokenizer(backend, special_tokens_map=roles, chat_template="{{ messages }}\n")
    assert tok.special_tokens_map == {
        k: v for k, v in roles.items() if k != "bos_token"
    }  # not in the vocabulary
    assert (tok.eot_id, tok.mask_id, tok.pad_id, tok.sep_id, tok.cls_id, tok.bos_id) == (
        259,
        262,
        257,
        None,
        None,
        None,
    )
    path = tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|sep|>" and config["chat_template"] == "{{ messages }}\n"
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "bos_token" not in config
    for loaded in (Tokenizer.load(tmp_path), Tokenizer.load(path)):
        assert loaded.special_tokens_map == tok.special_tokens_map
        assert loaded.chat_template == tok.chat_template and loaded.eot_id == 259
    # A file not named tokenizer.json is read alone, with graft's roles.
    copy = tmp_path / "copy.json"
    copy.write_text(path.read_text())
    assert Tokenizer.load(copy).eot_id == 256
    # Saving graft's defaults over it and other tokenizers' files leaves none of them to lie.
    (tmp_path / "chat_template.jinja").write_text("stale")
    (tmp_path / "special_tokens_map.json").write_text('{"eos_token": "<|sep|>"}')
    (tmp_path / "added_tokens.json").write_text('{"<stale>": 262}')
    bytes_tokenizer().save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.special_tokens_map == GRAFT_SPECIAL_TOKENS_MAP and again.chat_template is None
    assert again.vocab_size == 262 and again.sha256 == bytes_tokenizer().sha256
    assert not (tmp_path / "chat_template.jinja").exists()


def test_unknown_role_is_refused() -> None:
    with pytest.raises(TokenizerError, match="roles must be some of bos_token"):
        Tokenizer(bytes_tokenizer().backend, special_tokens_map={"end_token": EOT})


def test_byte_tokenizer_arrays_are_the_ids_tokenizers_gives() -> None:
    # encode_batch_arrays takes a byte tokenizer's ids from the UTF-8 bytes, except where an added
    # token occurs (one id) or where the backend was changed so that ids are no longer bytes.
    texts = ["plain", "naïve 日本 😀", "a <|endoftext|> b", "x<|sentinel_1|>", ""]
    texts += ["\x00\r\n", "<|pad"]
    for tok in (bytes_tokenizer(), bytes_tokenizer(sentinels=2)):
        assert tok._byte_identity_added_tokens() is not None
        arrays = tok.encode_batch_arrays(texts, dtype=np.uint16)
        assert [a.tolist() for a in arrays] == tok.encode_batch(texts)
        assert arrays[1].tolist() == list("naïve 日本 😀".encode())
    assert bytes_tokenizer(sentinels=2).encode_batch_arrays(texts[3:4])[0].tolist() == [120, 263]
    changed = bytes_tokenizer()
    changed.backend.normalizer = normalizers.Lowercase()
    assert changed._byte_identity_added_tokens() is None
    assert changed.encode_batch_arrays(["AB"])[0].tolist() == changed.encode("AB") == [97, 98]
    changed = bytes_tokenizer()
    changed.backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)
    assert changed._byte_identity_added_tokens() is None
    assert changed.encode_batch_arrays(["AB"])[0].tolist() == changed.encode("AB") == [32, 65, 66]
    # A lone surrogate is not UTF-8: tokenizers refuses it in its own way, as before.
    for tok in (bytes_tokenizer(), changed):
        with pytest.raises(TypeError):
            tok.encode_batch_arrays(["a\ud800"])
