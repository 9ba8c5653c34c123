"""graft.data.inputs: the one text -> model-input framing. Encoders read `[CLS] text [SEP]`,
decoders the bare text; a text longer than the budget loses its end, never its frame."""

from __future__ import annotations

import pytest

from graft.data.inputs import input_frame, model_inputs
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
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
