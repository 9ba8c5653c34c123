"""graft.data.inputs: the one text -> model-input framing. Encoders read `[CLS] text [SEP]`,
decoders the bare text; a text longer than the budget loses its end, never its frame."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from graft.data.inputs import chars_for_tokens, input_frame, leading_ids, model_inputs
from graft.data.tokenizer import Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import ConfigError
from graft.model.config import ModelConfig, preset


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return bytes_tokenizer()


def test_an_encoder_reads_cls_text_sep(tokenizer: Tokenizer) -> None:
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    assert cls is not None and sep is not None
    encoded = model_inputs(tokenizer, ["hi", "abc"], framed=True, max_len=16)
    assert encoded.ids == [[cls, *b"hi", sep], [cls, *b"abc", sep]]
    assert encoded.truncated == [False, False]


def test_a_decoder_reads_the_bare_text(tokenizer: Tokenizer) -> None:
    encoded = model_inputs(tokenizer, ["hi", "abc"], framed=False, max_len=16)
    assert encoded.ids == [list(b"hi"), list(b"abc")]


def test_truncation_cuts_the_text_and_keeps_the_frame(tokenizer: Tokenizer) -> None:
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    encoded = model_inputs(tokenizer, ["abcdefgh", "ab"], framed=True, max_len=5)
    assert encoded.ids == [[cls, *b"abc", sep], [cls, *b"ab", sep]]
    assert encoded.truncated == [True, False]
    bare = model_inputs(tokenizer, ["abcdefgh"], framed=False, max_len=5)
    assert bare.ids == [list(b"abcde")] and bare.truncated == [True]


def test_without_max_len_nothing_is_cut(tokenizer: Tokenizer) -> None:
    text = "x" * 300
    encoded = model_inputs(tokenizer, [text], framed=True, max_len=None)
    assert len(encoded.ids[0]) == 302 and encoded.truncated == [False]


def test_a_frame_needs_room_for_a_token(tokenizer: Tokenizer) -> None:
    with pytest.raises(ConfigError, match="max_len"):
        model_inputs(tokenizer, ["abc"], framed=True, max_len=2)


def test_a_tokenizer_without_cls_and_sep_frames_nothing(tokenizer: Tokenizer) -> None:
    bare = Tokenizer(
        tokenizer.backend, tokenizer.kind, special_tokens_map={"eos_token": "<|endoftext|>"}
    )
    assert bare.cls_id is None
    frame = input_frame(bare, framed=True)
    assert frame.size == 0
    assert model_inputs(bare, ["ab"], framed=True, max_len=4).ids == [list(b"ab")]


def test_the_frame_wraps_ids_and_aligned_labels(tokenizer: Tokenizer) -> None:
    frame = input_frame(tokenizer, framed=True)
    assert frame.size == 2 and frame.budget(10) == 8
    assert frame.wrap([7, 8]) == [tokenizer.cls_id, 7, 8, tokenizer.sep_id]
    assert frame.align([1, 2], -100) == [-100, 1, 2, -100]


def test_the_encoder_predicate_is_the_attention_mode() -> None:
    assert preset("bert-nano").is_encoder
    assert not preset("nano").is_encoder
    assert not ModelConfig().is_encoder


# -- cut before encoding ------------------------------------------------------------------------

_WORDS = "the quick brown fox, jumps over 12 lazy dogs; naïve café: don't stop!".split()


def _prose(words: int, seed: int) -> str:
    rng = random.Random(seed)
    gaps = [" "] * 12 + ["\n", "  ", "\n\n", "\t"]
    return "".join(rng.choice(_WORDS) + rng.choice(gaps) for _ in range(words))


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram", "bytes"])
def trained(request: pytest.FixtureRequest) -> Tokenizer:
    texts = [_prose(200, seed) for seed in range(8)]
    sizes = {"bpe": 400, "wordpiece": 200, "unigram": 120, "bytes": 0}
    return train_tokenizer(texts, request.param, sizes[request.param], min_frequency=1)


@pytest.mark.parametrize("framed", [False, True])
@pytest.mark.parametrize("max_len", [3, 40, 300])
def test_a_long_text_gives_the_ids_of_encoding_it_whole_and_cutting(
    trained: Tokenizer, max_len: int, framed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [_prose(words, seed) for seed, words in enumerate([2, 30, 400, 4000, 20000])]
    # No spaces: the cut falls inside a Metaspace word, its tokens the same far from the cut.
    # (Not so for a word a tokenizer folds into one token whole, such as WordPiece's [UNK] for a
    # word of over 100 characters: its pieces each become [UNK].)
    texts.append(",".join(_WORDS) * 400)
    frame = input_frame(trained, framed=framed)
    budget = frame.budget(max_len)
    whole = [trained.encode(text) for text in texts]
    # What is encoded is the text's first piece, however long the text (more only when needed).
    longest: list[int] = []
    encode_batch = trained.encode_batch
    monkeypatch.setattr(
        trained, "encode_batch", lambda xs: longest.append(max(map(len, xs))) or encode_batch(xs)
    )
    encoded = model_inputs(trained, texts, framed=framed, max_len=max_len)
    assert encoded.ids == [frame.wrap(ids[:budget]) for ids in whole]
    assert encoded.truncated == [len(ids) > budget for ids in whole]
    assert longest[0] <= chars_for_tokens(trained, budget) < 30_000
    for text, ids in zip(texts, whole):
        assert leading_ids(trained, text, budget) == ids[: budget + 1]


def test_a_text_whose_tokens_lie_far_apart_is_encoded_piece_by_piece() -> None:
    # The WordPiece pre-tokenizer drops whitespace: 5,000 spaces make no token at all.
    tokenizer = train_tokenizer(["a b c"] * 4, "wordpiece", 40, min_frequency=1)
    text = "a" + " " * 5000 + "b" + " " * 5000 + "c"
    a, b, c = tokenizer.encode("a b c")
    assert leading_ids(tokenizer, text, 1) == [a, b]
    assert leading_ids(tokenizer, text, 3) == [a, b, c]
    encoded = model_inputs(tokenizer, [text, text], framed=False, max_len=2)
    assert encoded.ids == [[a, b], [a, b]] and encoded.truncated == [True, True]
    assert model_inputs(tokenizer, [text], framed=False, max_len=3).truncated == [False]


_PEAK = """
import resource
from graft.data.inputs import model_inputs
from graft.data.tokenizer import bytes_tokenizer
tokenizer = bytes_tokenizer()
text = "one oversized record " * (20 * 2**20 // 21)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
encoded = model_inputs(tokenizer, [text], framed=True, max_len=128)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert len(encoded.ids[0]) == 128 and encoded.truncated == [True]
print((after - before) // 1024)
"""


def test_a_20_mb_text_is_encoded_in_bounded_memory() -> None:
    # Encoding the whole text and cutting it took 2.9 GiB here (about 150 bytes a character);
    # peak RSS is read in a fresh process, as the tokenizer allocates outside Python's heap.
    run = subprocess.run(
        [sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(run.stdout) < 64, f"peak RSS grew by {run.stdout.strip()} MiB"
