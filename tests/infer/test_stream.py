"""Text streaming: stop strings end the text, even when split across tokens, and no part of one
leaks."""

import pytest
import torch

from graft.data.tokenizer import bytes_tokenizer
from graft.infer.generate import SamplingParams, generate
from graft.infer.stream import StopStrings, TextStream
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel


def test_stop_string_split_across_pushes_is_cut_and_never_emitted():
    f = StopStrings(["END"])
    assert [f.push(t) for t in ["hel", "lo E", "N", "D more", "text"]] == ["hel", "lo ", "", "", ""]
    assert f.stopped and f.matched == "END"
    assert f.flush() == ""


def test_a_held_prefix_is_released_once_it_cannot_be_a_stop():
    f = StopStrings(["END"])
    assert [f.push(t) for t in ["a E", "N", "x"]] == ["a ", "", "ENx"]
    assert not f.stopped
    f.push("b EN")
    assert f.flush() == "EN"  # at the end of generation a partial stop string is plain text


def test_the_earliest_stop_wins_and_empty_stops_are_refused():
    f = StopStrings(["xyz", "b"])
    assert f.push("abxyz") == "a" and f.matched == "b"
    # The held suffix is the longest that could still start a stop: "aa" for "aab", not just "a".
    f = StopStrings(["aab"])
    assert f.push("caa") == "c"
    assert f.push("ac") == "aaac"
    with pytest.raises(ValueError, match="empty"):
        StopStrings(["ok", ""])


def _stream(stream: TextStream, ids: list[int]) -> list[str]:
    out = []
    for token in ids:
        out.append(stream.push(token))
        if stream.stopped:
            break
    return out


def test_text_stream_stops_across_byte_tokens_and_utf8_sequences():
    tok = bytes_tokenizer()
    text = "caf\u00e9 au lait\u00e9! then more"
    ids = tok.encode(text)
    assert len(ids) == len(
        text.encode()
    )  # one token per byte: stops and characters both span tokens
    stream = TextStream(tok, stop=["lait\u00e9!"])
    chunks = _stream(stream, ids)
    assert stream.stopped
    assert "".join(chunks) + stream.flush() == "caf\u00e9 au "
    for n in range(len(chunks)):  # at no point did the caller see any of the stop string
        assert "caf\u00e9 au ".startswith("".join(chunks[: n + 1]))
    assert stream.push(ids[-1]) == ""


def test_text_stream_without_stops_is_unchanged_and_flush_keeps_a_partial_stop():
    tok = bytes_tokenizer()
    ids = tok.encode("na\u00efve text, EN")
    assert "".join(_stream(TextStream(tok), ids)) == "na\u00efve text, EN"
    stream = TextStream(tok, stop=["END"])
    chunks = _stream(stream, ids)
    assert "".join(chunks) == "na\u00efve text, " and not stream.stopped
    assert stream.flush() == "EN"


def test_stop_string_on_generated_tokens_ends_the_text_at_its_first_occurrence():
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=61, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, init_std=0.3)
    ).eval()
    tok = bytes_tokenizer()  # ids below 61 are ASCII bytes: one character per token
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=1)
    free = list(generate(model, [5, 17], params))
    text = tok.decode(free)
    stop = text[10:13]  # three characters, so three tokens
    expected = text[: text.find(stop)]
    stream = TextStream(tok, stop=[stop])
    pulled = 0
    chunks = []
    for token in generate(model, [5, 17], params):
        pulled += 1
        chunks.append(stream.push(token))
        if stream.stopped:
            break
    assert "".join(chunks) + stream.flush() == expected
    assert pulled == text.find(stop) + 3  # generation ended on the token that completed the stop
