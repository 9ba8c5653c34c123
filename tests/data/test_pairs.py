"""Source/target pairs (`graft.data.pairs`): JSONL/JSON records and parallel files PREFIX.SRC and
PREFIX.TGT (plain or gzip), every bad record named by file and line in one line, skipped and
counted with skip_invalid; misaligned parallel files refused whatever the setting."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from graft.data.pairs import (
    TextPair,
    is_pair_file,
    pair_conversation,
    read_pairs,
    read_parallel,
)
from graft.data.records import Message
from graft.errors import DataError


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def one_line_error(call: Callable[[], object]) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_records_are_read_with_their_locations(tmp_path: Path) -> None:
    rows = [{"source": "Ein Hund.", "target": "A dog."}, {"source": "Zwei.", "target": "Two."}]
    pairs, skipped = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert skipped == 0
    assert pairs == [
        TextPair("Ein Hund.", "A dog.", f"{tmp_path / 'p.jsonl'}:1"),
        TextPair("Zwei.", "Two.", f"{tmp_path / 'p.jsonl'}:2"),
    ]
    array = tmp_path / "p.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    assert [p.source for p in read_pairs(array)[0]] == [f"{array}#0", f"{array}#1"]
    assert pair_conversation(pairs[0]).messages == (
        Message("user", "Ein Hund."),
        Message("assistant", "A dog."),
    )


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"source": "  ", "target": "x"}, "empty field 'source'"),
        ({"source": "x", "target": ""}, "empty field 'target'"),
        ({"source": "x"}, "missing field 'target'"),
        ({"source": "x", "target": 3}, "field 'target' must be a string, got int"),
    ],
)
def test_a_bad_record_is_named_or_skipped_and_counted(
    tmp_path: Path, bad: dict, problem: str
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"source": "a", "target": "b"}, bad])
    assert f"{path}:2: {problem}" in one_line_error(lambda: read_pairs(path))
    pairs, skipped = read_pairs(path, skip_invalid=True)
    assert [p.source_text for p in pairs] == ["a"] and skipped == 1


def test_pair_files_are_told_from_instruction_records(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"source": "a", "target": "b"}])
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    assert is_pair_file(pairs) and not is_pair_file(alpaca)
    assert not is_pair_file(tmp_path / "missing.jsonl")


def test_parallel_files_plain_or_gzip_align_line_by_line(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.en", ["A dog.", "Two men.", "A girl."])
    # Windows line endings are line endings, not text.
    (tmp_path / "train.de.gz").write_bytes(gzip.compress(b"Ein Hund.\r\nZwei M\xc3\xa4nner.\r\n"))
    with gzip.open(tmp_path / "train.de.gz", "ab") as more:
        more.write(b"Ein M\xc3\xa4dchen.\r\n")
    pairs, skipped = read_parallel(tmp_path / "train", "en", "de")
    assert skipped == 0
    assert [(p.source_text, p.target_text) for p in pairs] == [
        ("A dog.", "Ein Hund."),
        ("Two men.", "Zwei Männer."),
        ("A girl.", "Ein Mädchen."),
    ]
    assert pairs[2].source == f"{tmp_path / 'train.en'}:3"
    # The other direction reads the same files the other way round.
    assert read_parallel(tmp_path / "train", "de", "en")[0][0].source_text == "Ein Hund."


def test_an_empty_line_is_named_with_its_file_or_skipped_keeping_the_alignment(
    tmp_path: Path,
) -> None:
    write_lines(tmp_path / "v.en", ["one", "two", "three", "four"])
    target = write_lines(tmp_path / "v.de.gz", ["eins", " ", "drei", "vier"])
    message = one_line_error(lambda: read_parallel(tmp_path / "v", "en", "de"))
    assert message.startswith(f"{target}:2: empty target line")
    assert f"{tmp_path / 'v.en'}:2" in message
    pairs, skipped = read_parallel(tmp_path / "v", "en", "de", skip_invalid=True)
    assert skipped == 1
    assert [(p.source_text, p.target_text) for p in pairs] == [
        ("one", "eins"),
        ("three", "drei"),
        ("four", "vier"),
    ]
    write_lines(tmp_path / "w.en", ["one", ""])
    write_lines(tmp_path / "w.de", ["eins", "zwei"])
    message = one_line_error(lambda: read_parallel(tmp_path / "w", "en", "de"))
    assert message.startswith(f"{tmp_path / 'w.en'}:2: empty source line")


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_misaligned_parallel_files_are_refused_naming_both(
    tmp_path: Path, skip_invalid: bool
) -> None:
    source = write_lines(tmp_path / "t.en", ["one", "two", "three"])
    target = write_lines(tmp_path / "t.de.gz", ["eins", "zwei"])
    message = one_line_error(
        lambda: read_parallel(tmp_path / "t", "en", "de", skip_invalid=skip_invalid)
    )
    assert f"{source} has 3 lines but {target} has 2" in message


def test_a_missing_side_is_named_with_both_spellings(tmp_path: Path) -> None:
    write_lines(tmp_path / "t.en", ["one"])
    message = one_line_error(lambda: read_parallel(tmp_path / "t", "en", "fr"))
    assert message.startswith(f"{tmp_path / 't.fr'}: no such file (nor t.fr.gz)")
