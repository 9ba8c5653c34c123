"""Tests for graft.data.tagged: reading BIO-tagged sentences (CoNLL, JSON) and aligning tags to
tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from graft.data.records import IGNORE_INDEX
from graft.data.tagged import TaggedSentence, read_tagged, tagged_inputs
from graft.data.tokenizer import Tokenizer, train_tokenizer
from graft.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- CoNLL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.txt", "train.conll", "train"])
def test_conll_sentences_with_their_sources(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, CONLL)
    sentences, skipped = read_tagged(path)
    assert skipped == 0
    assert sentences == [
        TaggedSentence(
            ("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O"), f"{path}:3"
        ),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER"), f"{path}:9"),
    ]


def test_conll_tag_column_picks_another_column(tmp_path: Path) -> None:
    sentences, _ = read_tagged(write(tmp_path / "t.txt", CONLL), tag_column=2)
    assert sentences[0].tags == ("B-NP", "B-VP", "B-NP", "I-NP")
    two_columns = write(tmp_path / "two.txt", "Paris B-LOC\r\nis O\r\n\r\nfine O\r\n")
    sentences, _ = read_tagged(two_columns)
    assert [s.words for s in sentences] == [("Paris", "is"), ("fine",)]


def test_conll_line_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", CONLL.replace("German JJ B-NP B-MISC", "German B-MISC"))
    with pytest.raises(DataError, match=r"t\.txt:5: expected 4 fields like line 3, got 2$"):
        read_tagged(path)
    # The whole sentence goes: a sentence missing a word would teach wrong tags.
    sentences, skipped = read_tagged(path, skip_invalid=True)
    assert [s.words for s in sentences] == [("Peter", "Blackburn")] and skipped == 1


@pytest.mark.parametrize("tag", ["PER", "B-", "b-PER", "E-PER", "S-LOC", "I_PER"])
def test_conll_tag_that_is_not_bio(tmp_path: Path, tag: str) -> None:
    path = write(
        tmp_path / "t.txt", CONLL.replace("Blackburn NNP I-NP I-PER", f"Blackburn NNP I-NP {tag}")
    )
    with pytest.raises(
        DataError,
        match=rf"t\.txt:10: tag '{tag}' is not a BIO tag; expected B-<type>, I-<type> or O",
    ):
        read_tagged(path)
    sentences, skipped = read_tagged(path, skip_invalid=True)
    assert len(sentences) == 1 and skipped == 1


def test_conll_tag_column_that_is_not_a_tag_column(tmp_path: Path) -> None:
    for column in (0, 4, -5):
        with pytest.raises(
            DataError, match=rf"t\.txt:3: tag_column={column} does not name a tag column"
        ):
            read_tagged(write(tmp_path / "t.txt", CONLL), tag_column=column, skip_invalid=True)
    with pytest.raises(DataError, match=r"one\.txt:1: tag_column=-1 does not name"):
        read_tagged(write(tmp_path / "one.txt", "word\n"))


def test_conll_files_that_hold_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no valid tagged sentences"):
        read_tagged(write(tmp_path / "t.txt", "-DOCSTART- -X- O O\n\n\n"))
    with pytest.raises(DataError, match="no such file"):
        read_tagged(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="cannot read a '.csv' file as tagged sentences"):
        read_tagged(write(tmp_path / "t.csv", "a,b\n"))


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        # A sentence of many short lines, and one line long enough alone.
        ("t.txt", "ok O\n\n" + "".join(f"w{i} O\n" for i in range(20)) + "\nfine O\n", ":3"),
        ("t.txt", "ok O\n\n" + "w" * 80 + " O\n\nfine O\n", ":3"),
        (
            "t.jsonl",
            '{"tokens": ["ok"], "tags": ["O"]}\n'
            + json.dumps({"tokens": ["w"] * 20, "tags": ["O"] * 20})
            + '\n{"tokens": ["fine"], "tags": ["O"]}\n',
            ":2",
        ),
    ],
)
def test_an_oversized_sentence_is_invalid(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=rf"{name}{where}: record longer than 64 characters"):
        read_tagged(path, max_record_chars=64)
    sentences, skipped = read_tagged(path, skip_invalid=True, max_record_chars=64)
    assert [s.words for s in sentences] == [("ok",), ("fine",)] and skipped == 1
    assert len(read_tagged(path)[0]) == 3


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"ok O\n\ncaf\xe9 O\n")
    with pytest.raises(DataError, match=r"t\.txt:3: byte 0xe9 is not valid utf-8"):
        read_tagged(path)
    sentences, skipped = read_tagged(path, skip_invalid=True)
    assert [s.words for s in sentences] == [("ok",)] and skipped == 1
    assert read_tagged(path, encoding="latin-1")[0][1].words == ("café",)


# -- JSON ---------------------------------------------------------------------------------------


def test_jsonl_with_tags_or_ner_tags(tmp_path: Path) -> None:
    items = [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"id": "1", "tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]},
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(item) for item in items) + "\n")
    sentences, skipped = read_tagged(path)
    assert skipped == 0
    assert sentences == [
        TaggedSentence(("EU", "rejects"), ("B-ORG", "O"), f"{path}:1"),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER"), f"{path}:2"),
    ]


def test_json_array_with_integer_tags_named_by_tag_names(tmp_path: Path) -> None:
    # As Hugging Face's conll2003 stores them: class ids, named on the dataset card.
    path = write(
        tmp_path / "t.json", json.dumps([{"tokens": ["Peter", "Blackburn"], "ner_tags": [1, 2]}])
    )
    sentences, _ = read_tagged(path, tag_names=["O", "B-PER", "I-PER"])
    assert sentences == [TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER"), f"{path}#0")]
    # Without tag_names (as every command reads them) the hint is what to do with the file: no
    # command-line option takes tag names.
    with pytest.raises(DataError) as err:
        read_tagged(path)
    assert str(err.value) == (
        f"{path}#0: ner_tags[0] must be a tag string, got int; write the tag names (B-PER, O, "
        "...) in the file: graft reads tags as strings (in Python, read_tagged(tag_names=[...]) "
        "names integer tags)"
    )
    with pytest.raises(DataError, match=r"ner_tags\[1\] = 2 is not an index into the 2 tag_names"):
        read_tagged(path, tag_names=["O", "B-PER"])


@pytest.mark.parametrize(
    "item, problem",
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags; expected one tag per token"),
        ({"tokens": ["a"], "tags": ["X-LOC"]}, "token 0: tag 'X-LOC' is not a BIO tag"),
        ({"tokens": ["a", " "], "tags": ["O", "O"]}, "token 1: empty token"),
        ({"tokens": [], "tags": []}, "empty sentence"),
        ({"tokens": "a b", "tags": ["O", "O"]}, "'tokens' must be a list of strings"),
        (
            {"words": ["a"], "labels": ["O"]},
            "expected fields 'tokens' and 'tags' \\(or 'ner_tags'\\)",
        ),
    ],
)
def test_bad_json_sentences_name_file_and_line(
    tmp_path: Path, item: dict[str, object], problem: str
) -> None:
    good = json.dumps({"tokens": ["ok"], "tags": ["O"]})
    path = write(tmp_path / "t.jsonl", f"{good}\n{json.dumps(item)}\n")
    with pytest.raises(DataError, match=rf"t\.jsonl:2.*{problem}"):
        read_tagged(path)
    sentences, skipped = read_tagged(path, skip_invalid=True)
    assert len(sentences) == 1 and skipped == 1


def test_json_line_that_does_not_parse(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t\.jsonl:1: invalid JSON"):
        read_tagged(write(tmp_path / "t.jsonl", "{oops\n"))


# -- aligning tags to tokens --------------------------------------------------------------------

WORDS = (
    "EU",
    "rejects",
    "German-made",
    "call",
    "to",
    "boycott",
    "café",
    "日本",
    "1996-08-22",
    "!",
    "Blackburn",
    "x",
)
TAGS = ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-LOC", "B-LOC", "O", "O", "B-PER", "O")
LABELS = {"O": 0, "B-ORG": 1, "B-MISC": 2, "B-LOC": 3, "B-PER": 4, "I-PER": 5}


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram", "bytes"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    texts = [
        " ".join(WORDS),
        "the European Union rejects calls to boycott",
        "Peter Blackburn said so",
    ] * 4
    sizes = {"bpe": 300, "wordpiece": 120, "unigram": 80, "bytes": 0}
    return train_tokenizer(texts, request.param, sizes[request.param], min_frequency=1)


def word_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of one word's tokens, as the tokenizer spells it."""
    if tokenizer.kind == "wordpiece":
        # The WordPiece decoder puts spaces between a word's punctuation pieces; join them instead.
        return "".join(str(tokenizer.id_to_token(i)).removeprefix("##") for i in ids)
    # A word's tokens may begin with its leading space and end with a lone space token that
    # belongs to the next word but is not labelled.
    return tokenizer.decode(ids).strip(" ")


def align_tags(
    tokenizer: Tokenizer,
    words: list[str],
    tags: list[str],
    label_ids: dict[str, int],
    max_len: int,
    *,
    source: str = "sentence",
) -> tuple[list[int], list[int], bool]:
    """(ids, labels, truncated) of the one tagging path, unframed."""
    inputs = tagged_inputs(tokenizer, words, framed=False, max_len=max_len, source=source)
    return inputs.ids, inputs.labels(tags, label_ids, source=source), inputs.truncated


def test_first_sub_token_of_each_word_carries_its_tag(tokenizer: Tokenizer) -> None:
    ids, labels, truncated = align_tags(tokenizer, WORDS, TAGS, LABELS, max_len=512)
    assert not truncated and len(ids) == len(labels) > len(WORDS)
    assert ids == tokenizer.encode(" ".join(WORDS))
    starts = [j for j, label in enumerate(labels) if label != IGNORE_INDEX]
    # Exactly one labelled token per word, in order, carrying that word's tag.
    assert [labels[j] for j in starts] == [LABELS[tag] for tag in TAGS]
    assert starts[0] == 0
    for word, begin, end in zip(WORDS, starts, [*starts[1:], len(ids)]):
        assert word_text(tokenizer, ids[begin:end]) == word
        # The labelled token holds some of the word, never only the space before it.
        assert word_text(tokenizer, ids[begin : begin + 1])


def test_a_lone_space_token_is_not_the_labelled_one() -> None:
    # The bytes tokenizer spells " rejects" as "Ġ", "r", ...: "r" carries the tag.
    tokenizer = train_tokenizer([], "bytes", 0)
    ids, labels, _ = align_tags(tokenizer, ["EU", "rejects"], ["B-ORG", "O"], LABELS, max_len=16)
    assert [tokenizer.id_to_token(i) for i in ids[:4]] == ["E", "U", "Ġ", "r"]
    assert labels[:4] == [LABELS["B-ORG"], IGNORE_INDEX, IGNORE_INDEX, LABELS["O"]]


def test_truncation_keeps_the_start(tokenizer: Tokenizer) -> None:
    full, full_labels, _ = align_tags(tokenizer, WORDS, TAGS, LABELS, max_len=512)
    ids, labels, truncated = align_tags(tokenizer, WORDS, TAGS, LABELS, max_len=5)
    assert truncated and ids == full[:5] and labels == full_labels[:5]
    assert align_tags(tokenizer, WORDS, TAGS, LABELS, max_len=len(full))[2] is False


class _Spy:
    """A tokenizer backend that records how long each text it encodes is."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.lengths = backend, list[int]()

    def encode(self, text: str, add_special_tokens: bool) -> Any:
        self.lengths.append(len(text))
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_a_long_sentence_is_cut_before_it_is_encoded(tokenizer: Tokenizer) -> None:
    words, tags = WORDS * 10_000, TAGS * 10_000
    short = align_tags(tokenizer, WORDS * 2, TAGS * 2, LABELS, max_len=10)
    spy = _Spy(tokenizer.backend)
    spied = Tokenizer(spy, tokenizer.kind)
    assert align_tags(spied, words, tags, LABELS, max_len=10) == short
    assert short[2] and max(spy.lengths) < 5_000


def test_unknown_tags_and_bad_arguments(tokenizer: Tokenizer) -> None:
    with pytest.raises(DataError, match=r"t\.txt:3: tag 'I-ORG' of word 1 is not a known label"):
        align_tags(tokenizer, ["EU", "rejects"], ["B-ORG", "I-ORG"], LABELS, 8, source="t.txt:3")
    with pytest.raises(DataError, match="2 words but 1 tags"):
        align_tags(tokenizer, ["EU", "rejects"], ["O"], LABELS, 8)
    with pytest.raises(ConfigError, match="max_len must be an integer >= 1"):
        align_tags(tokenizer, ["EU"], ["O"], LABELS, 0)


def test_a_word_without_tokens_is_reported() -> None:
    # The BERT normaliser drops control characters, so such a word has nothing left to encode.
    tokenizer = train_tokenizer(["a b c"] * 4, "wordpiece", 40, min_frequency=1)
    with pytest.raises(DataError, match=r"s:1: word 1 \('\\x07'\) produced no token"):
        align_tags(tokenizer, ["a", "\x07", "b"], ["O", "O", "O"], LABELS, 8, source="s:1")


# -- the real dataset ---------------------------------------------------------------------------


@pytest.mark.parametrize("split, count", [("train", 14_041), ("dev", 3_250), ("test", 3_453)])
def test_reads_conll2003(split: str, count: int) -> None:
    path = SHARED_DATA / "conll2003" / f"{split}.txt"
    if not path.is_file():
        pytest.skip(f"shared dataset conll2003/{split}.txt not found under {SHARED_DATA}")
    sentences, skipped = read_tagged(path)
    assert skipped == 0 and len(sentences) == count
    assert all(len(s.words) == len(s.tags) > 0 for s in sentences)
    assert {tag for s in sentences for tag in s.tags} <= {
        "O",
        *(f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC", "MISC")),
    }
