"""Question answering records and windows: SQuAD JSON and JSONL read with their sources, bad records
named (and skipped with skip_invalid), and the span round trip: an answer's token span in a window
maps back to exactly its characters, at the window's edges too, and an answer cut by a window's
end is [CLS] there and whole in the next window; windows cover every context token."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from graft.data.qa import (
    Answer,
    QAWindow,
    answer_positions,
    answer_tokens,
    qa_windows,
    read_qa,
)
from graft.data.tokenizer import Tokenizer, train_tokenizer
from graft.errors import DataError, TokenizerError

XQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad" / "xquad.en.json"
WORDS = (
    "the river stone fox dog cat bird tree house light night day runs reads writes over under "
    "near with from into and but because while then Paris 1867 well-known"
).split()


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tokenizer(request: pytest.FixtureRequest, text_corpus: Path) -> Tokenizer:
    """A small tokenizer trained on the shared test corpus: byte-level BPE (whose tokens carry
    the space before a word) and WordPiece (whose offsets leave it out)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(text_corpus.iterdir())]
    return train_tokenizer([*texts, " ".join(WORDS)], request.param, 300, min_frequency=1)


def random_context(rng: random.Random, words: int) -> str:
    out = []
    for _ in range(words):
        word = rng.choice(WORDS)
        out.append(word + (rng.choice([",", ".", "!", ""]) if rng.random() < 0.15 else ""))
    return " ".join(out) + "."


def span_text(window: QAWindow, context: str, start: int, end: int) -> str:
    first, last = window.offsets[start], window.offsets[end]
    assert first is not None and last is not None
    return context[first[0] : last[1]]


def test_windows_cover_the_context_and_overlap_by_the_stride(tokenizer: Tokenizer) -> None:
    context = random_context(random.Random(0), 120)
    windows = qa_windows(tokenizer, "where is the fox?", context, max_len=32, stride=5)
    n_context = len(windows[0].spans)
    question = len(tokenizer.encode("where is the fox?"))
    assert len(windows) > 3 and n_context > 60
    seen: set[int] = set()
    for i, window in enumerate(windows):
        assert len(window.ids) <= 32 and window.ids[0] == tokenizer.cls_id
        assert window.ids[window.piece_start - 1] == tokenizer.sep_id == window.ids[-1]
        assert window.piece_start == question + 2
        assert window.token_type_ids == (0,) * (question + 2) + (1,) * (window.piece_tokens + 1)
        # Only context positions stand for characters.
        assert all(o is None for o in window.offsets[: window.piece_start])
        assert window.offsets[-1] is None
        seen.update(range(window.first_token, window.first_token + window.piece_tokens))
        if i:
            before = windows[i - 1]
            assert before.first_token + before.piece_tokens - window.first_token == 5
    assert seen == set(range(n_context))  # the last window reaches the context's end
    assert windows[-1].first_token + windows[-1].piece_tokens == n_context


def test_random_answers_map_back_to_exactly_their_characters(tokenizer: Tokenizer) -> None:
    rng = random.Random(1)
    answered = 0
    for _ in range(30):
        context = random_context(rng, rng.randint(20, 80))
        # Whole-word answers (punctuation kept), at random places.
        bounds = [(m, m + len(w)) for m, w in _words(context)]
        first = rng.randrange(len(bounds))
        last = min(len(bounds) - 1, first + rng.randint(0, 1))
        start, end = bounds[first][0], bounds[last][1]
        answer = Answer(context[start:end], start)
        windows = qa_windows(tokenizer, "which words?", context, max_len=32, stride=8)
        tokens = answer_tokens(windows[0].spans, answer)
        assert tokens is not None
        found = [answer_positions(w, answer) for w in windows]
        for window, (s, e) in zip(windows, found):
            if (s, e) != (0, 0):
                assert window.piece_start <= s <= e < window.piece_start + window.piece_tokens
                assert span_text(window, context, s, e) == answer.text
        # An answer no longer than the overlap + 1 is whole in some window.
        if tokens[1] - tokens[0] + 1 <= 9:
            assert any(f != (0, 0) for f in found), (context, answer)
        answered += any(f != (0, 0) for f in found)
    assert answered >= 25


def _words(text: str) -> list[tuple[int, str]]:
    out, at = [], 0
    for word in text.split(" "):
        out.append((at, word))
        at += len(word) + 1
    return out


def test_answers_at_window_edges_and_across_windows(tokenizer: Tokenizer) -> None:
    context = random_context(random.Random(2), 100)
    windows = qa_windows(tokenizer, "what?", context, max_len=20, stride=3)
    assert len(windows) >= 4
    for i, window in enumerate(windows):
        for position in (window.piece_start, window.piece_start + window.piece_tokens - 1):
            span = window.offsets[position]
            if span is None:  # a token of whitespace alone stands for no characters
                continue
            answer = Answer(context[span[0] : span[1]], span[0])
            assert answer_positions(window, answer) == (position, position)
            assert span_text(window, context, position, position) == answer.text
        if i + 1 == len(windows):
            break
        # An answer from this window's last context token into the next token: cut here, whole
        # in the next window, which repeats the last 3 tokens.
        last = window.first_token + window.piece_tokens - 1
        if any(a == b for a, b in window.spans[last : last + 2]):
            continue  # a token of whitespace alone: no characters to answer with
        start, end = window.spans[last][0], window.spans[last + 1][1]
        answer = Answer(context[start:end], start)
        assert answer_positions(window, answer) == (0, 0)
        nxt = windows[i + 1]
        s, e = answer_positions(nxt, answer)
        assert (s, e) == (
            nxt.piece_start + last - nxt.first_token,
            nxt.piece_start + last + 1 - nxt.first_token,
        )
        assert span_text(nxt, context, s, e) == answer.text


def test_byte_level_offsets_leave_out_the_space_before_a_word(text_corpus: Path) -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted(text_corpus.iterdir())]
    tokenizer = train_tokenizer(texts, "bpe", 300, min_frequency=1)
    context = "Near the river, the fox runs."
    raw = tokenizer.backend.encode(context, add_special_tokens=False).offsets
    assert any(context[a].isspace() for a, b in raw if b > a)  # the raw offsets hold spaces
    (window,) = qa_windows(tokenizer, "who?", context, max_len=64, stride=0)
    for span in window.offsets:
        if span is not None:
            text = context[span[0] : span[1]]
            assert text and text == text.strip()
    assert answer_positions(window, Answer("fox", context.index("fox"))) != (0, 0)


def test_a_question_that_leaves_no_room_is_named(tokenizer: Tokenizer) -> None:
    question = " ".join(["where"] * 40)
    with pytest.raises(DataError) as err:
        qa_windows(tokenizer, question, "the fox", max_len=30, stride=4, source="q.jsonl:7")
    message = str(err.value)
    assert message.startswith("q.jsonl:7: the question has") and "\n" not in message
    assert "window of 30" in message


def test_a_tokenizer_without_cls_and_sep_is_refused() -> None:
    # graft's own tokenizers have both; GPT-2's, for one, has neither.
    gpt2_like = SimpleNamespace(cls_id=None, sep_id=None)
    with pytest.raises(TokenizerError, match="cls and sep"):
        qa_windows(gpt2_like, "who?", "the fox", max_len=30, stride=4)  # type: ignore[arg-type]


# -- reading -------------------------------------------------------------------------------


def squad(path: Path, qas: list[dict], context: str = "The fox runs near the river.") -> Path:
    data = {
        "version": "1.1",
        "data": [
            {"title": "Fox", "paragraphs": [{"context": context, "qas": qas}]},
            {
                "title": "Tree",
                "paragraphs": [
                    {
                        "context": "A tall tree.",
                        "qas": [
                            {
                                "id": "t1",
                                "question": "How tall?",
                                "answers": [],
                                "is_impossible": True,
                                "plausible_answers": [{"text": "tall", "answer_start": 2}],
                            }
                        ],
                    }
                ],
            },
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_reads_squad_json_with_sources(tmp_path: Path) -> None:
    qas = [
        {
            "id": "f1",
            "question": "Where does the fox run?",
            "answers": [
                {"text": "near the river", "answer_start": 13},
                {"text": "the river", "answer_start": 18},
            ],
        }
    ]
    path = squad(tmp_path / "s.json", qas)
    records, skipped = read_qa(path)
    assert skipped == 0 and [r.id for r in records] == ["f1", "t1"]
    fox, tree = records
    assert fox.source == f"{path}:data[0].paragraphs[0].qas[0]" and fox.title == "Fox"
    assert [(a.text, a.start) for a in fox.answers] == [("near the river", 13), ("the river", 18)]
    assert tree.answers == () and tree.source == f"{path}:data[1].paragraphs[0].qas[0]"


@pytest.mark.parametrize("layout", ["columns", "list"])
def test_reads_jsonl_in_both_answer_layouts(tmp_path: Path, layout: str) -> None:
    context = "Paris is the capital of France."
    answers: object = {"text": ["Paris"], "answer_start": [0]}
    if layout == "list":
        answers = [{"text": "Paris", "answer_start": 0}]
    rows = [
        {"context": context, "question": "What is the capital?", "answers": answers},
        {"id": 9, "title": "x", "context": context, "question": "No answer?", "answers": []},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    records, _ = read_qa(path)
    assert records[0].answers == (Answer("Paris", 0),) and records[0].id == f"{path}:1"
    assert records[1].answers == () and records[1].id == "9" and records[1].source == f"{path}:2"


def test_an_answer_not_at_its_start_is_named_or_skipped(tmp_path: Path) -> None:
    good = {"id": "a", "question": "Who runs?", "answers": [{"text": "fox", "answer_start": 4}]}
    bad = {"id": "b", "question": "Where?", "answers": [{"text": "river", "answer_start": 3}]}
    path = squad(tmp_path / "bad.json", [good, bad])
    with pytest.raises(DataError) as err:
        read_qa(path)
    message = str(err.value)
    assert message.startswith(f"{path}:data[0].paragraphs[0].qas[1]: answer 0 'river'")
    assert "answer_start 3" in message and "\n" not in message
    records, skipped = read_qa(path, skip_invalid=True)
    assert skipped == 1 and [r.id for r in records] == ["a", "t1"]


def test_a_squad_question_without_answers_is_named_or_skipped(tmp_path: Path) -> None:
    good = {"id": "a", "question": "Who runs?", "answers": [{"text": "fox", "answer_start": 4}]}
    # No answers and not is_impossible: a question the file forgot to answer, not "no answer".
    bare = {"id": "b", "question": "Where?"}
    # is_impossible alone is enough to say there is no answer.
    impossible = {"id": "c", "question": "Why?", "is_impossible": True}
    path = squad(tmp_path / "bare.json", [good, bare, impossible])
    with pytest.raises(DataError) as err:
        read_qa(path)
    message = str(err.value)
    assert message.startswith(f"{path}:data[0].paragraphs[0].qas[1]: missing field 'answers'")
    assert "\n" not in message
    records, skipped = read_qa(path, skip_invalid=True)
    assert skipped == 1 and [r.id for r in records] == ["a", "c", "t1"]
    assert records[1].answers == ()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"question": "q?", "answers": []}, "missing field 'context'"),
        ({"context": "c", "question": " ", "answers": []}, "empty field 'question'"),
        ({"context": "c", "question": "q?", "answers": 3}, "field 'answers' must be"),
        # A misspelt field is not an unanswerable question.
        (
            {"context": "c", "question": "q?", "answer": {"text": ["c"], "answer_start": [0]}},
            r"missing field 'answers' \(fields: answer, context, question\)",
        ),
        (
            {"context": "c", "question": "q?", "answers": [{"text": "c", "answer_start": -1}]},
            "answer_start that is an integer >= 0",
        ),
    ],
)
def test_malformed_jsonl_records_name_their_line(tmp_path: Path, row: dict, problem: str) -> None:
    path = tmp_path / "q.jsonl"
    good = {"context": "c d", "question": "q?", "answers": [{"text": "d", "answer_start": 2}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=problem) as err:
        read_qa(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert read_qa(path, skip_invalid=True)[1] == 1


@pytest.mark.skipif(not XQUAD.is_file(), reason=f"shared dataset not found: {XQUAD}")
def test_xquad_reads_whole() -> None:
    records, skipped = read_qa(XQUAD)
    assert skipped == 0 and len(records) == 1190
    assert len({r.title for r in records}) == 48
    assert all(
        r.answers and r.context[a.start : a.end] == a.text for r in records for a in r.answers
    )
