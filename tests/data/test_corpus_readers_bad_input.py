"""Bad bytes in the files the data readers take: a line that is not UTF-8, a damaged or
truncated `.jsonl.zst`, a broken CSV. Each is one line naming the file (and line or row),
counted and skipped where the reader counts problems, never a traceback or a silently shorter
corpus."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from graft.cli import main
from graft.data.collect import CollectOptions, collect
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, Problems, read_corpus
from graft.data.dedup import _eval_texts
from graft.data.documents import count_documents, iter_documents
from graft.errors import DataError


def _jsonl(count: int) -> bytes:
    line = "the quick brown fox jumps over the lazy dog {} and that is that with the end"
    return b"".join(
        (json.dumps({"text": line.format(i)}) + "\n").encode("utf-8") for i in range(count)
    )


def _collect(sources: list[Path], **options: Any) -> tuple[list[CorpusDoc], Problems, list[str]]:
    said: list[str] = []
    problems = Problems(strict=options.pop("strict", False), say=said.append)
    docs = list(collect(sources, problems=problems, options=CollectOptions(**options)))
    return docs, problems, said


# ---- a line that is not UTF-8 -------------------------------------------------------------


def test_a_line_that_is_not_utf8_is_a_bad_line_at_its_number(tmp_path: Path) -> None:
    """Past the text decoder's first chunk, too: the line and its byte are named."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(_jsonl(3000) + b'{"text":"caf\xe9 bad"}\n' + _jsonl(1))
    said: list[str] = []
    problems = Problems(say=said.append)
    docs = list(read_corpus(path, problems))
    assert len(docs) == 3001
    assert problems.counts == {"bad line": 1}
    assert said == [
        f"skipped {path}:3001: byte 12 of the line is not valid UTF-8 "
        "(invalid continuation byte); save it as UTF-8"
    ]
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:3001: byte 12 of the line"):
        list(read_corpus(path))


def test_a_corpus_step_skips_the_line_and_strict_stops_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path.write_bytes(_jsonl(1) + b'{"text":"caf\xe9 bad"}\n' + _jsonl(1))
    # redact: the quickest of the steps that read a corpus alike (clean, dedup, redact).
    argv = ["data", "redact", str(path), "--workers", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"skipped {path}:2: byte 12 of the line is not valid UTF-8" in captured.err
    assert len(list(read_corpus(out))) == 2
    out.unlink()
    assert main([*argv, "--strict"]) == 2
    assert capsys.readouterr().err.startswith(f"graft: error: {path}:2: byte 12")
    assert not out.exists()


# ---- a file that is not a corpus at all ------------------------------------------------------

# The corpus steps, each with the files it would write for `{out}`.
_STEPS = {
    "clean": (["data", "clean", "{in}", "--no-quality", "--out", "{out}"], ["{out}"]),
    "dedup": (["data", "dedup", "{in}", "--out", "{out}"], ["{out}"]),
    "redact": (["data", "redact", "{in}", "--workers", "1", "--out", "{out}"], ["{out}"]),
    "report": (["data", "report", "{in}"], ["{in}.report.md", "{in}.report.lengths.png"]),
}


def _step(name: str, path: Path, out: Path) -> tuple[list[str], list[Path]]:
    argv, writes = _STEPS[name]
    fill = {"{in}": str(path), "{out}": str(out)}

    def filled(arg: str) -> str:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        return arg

    written = [Path(filled(w)) for w in writes]
    if name != "report":
        written.append(Path(f"{out}{STATS_SUFFIX}"))
    return [filled(a) for a in argv], written


@pytest.mark.parametrize("step", sorted(_STEPS))
def test_a_text_file_given_to_a_corpus_step_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str
) -> None:
    """Each of its 200 lines was a `skipped ...: not JSON` line, then an empty corpus, exit 0.
    With the progress bar on (the default), too: the error is all that is printed."""
    path = tmp_path / "my_texts" / "frank.txt"
    path.parent.mkdir()
    path.write_text("".join(f"It was a dark and stormy night, {i}.\n" for i in range(200)))
    argv, written = _step(step, path, tmp_path / "y.jsonl")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"graft: error: {path}: not a corpus (JSON lines of documents; line 1 is not JSON); "
        f"gather text files with `graft data collect {path} --out corpus.jsonl` first"
    ]
    assert not [p for p in written if p.exists()]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["frank.txt", "my_texts"]


@pytest.mark.parametrize("step", sorted(_STEPS))
def test_a_corpus_with_a_bad_line_inside_is_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str
) -> None:
    path = tmp_path / "in.jsonl"
    texts = [
        "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.",
        "It is a truth universally acknowledged that a single man must be in want of a wife.",
        "Happy families are all alike; every unhappy family is unhappy in its own way.",
    ]
    lines = [json.dumps({"text": text}) for text in texts]
    # A blank first line, the bad line 4, no newline at the end.
    path.write_text("\n" + "\n".join([*lines[:2], "not json", lines[2]]), encoding="utf-8")
    out = tmp_path / "y.jsonl"
    argv, written = _step(step, path, out)
    assert main([*argv, "--no-progress"] if step != "report" else argv) == 0
    assert f"skipped {path}:4: not JSON (Expecting value)" in capsys.readouterr().err
    assert all(p.exists() for p in written)
    if step != "report":
        assert len(list(read_corpus(out))) == 3
    else:
        assert "| lines skipped | 1 |" in written[0].read_text(encoding="utf-8")


def test_the_first_line_decides_whether_a_file_is_a_corpus(tmp_path: Path) -> None:
    """Blank lines and a byte-order mark before it are passed over; a first object without a
    text is a bad line like any other (the file is JSON lines, one record is wrong)."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\n  \n" + b'{"body": 1}\n' + _jsonl(1))
    problems = Problems()
    assert len(list(read_corpus(path, problems))) == 1 and problems.counts == {"bad line": 1}
    for first, what in (
        (b"[1, 2]\n", "not a JSON object"),
        (b'"text"\n', "not a JSON object"),
        ("It was dark.\n".encode("utf-16"), "not UTF-8"),
        (b"\n\nChapter 1\n", "not JSON"),
    ):
        path.write_bytes(first + _jsonl(2))
        line = 3 if first.startswith(b"\n") else 1
        message = f"{path}: not a corpus (JSON lines of documents; line {line} is {what})"
        for strict in (False, True):
            with pytest.raises(DataError, match=f"^{re.escape(message)}"):
                list(read_corpus(path, Problems(strict=strict)))


def test_stdin_that_is_not_a_corpus_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"It was a dark and stormy night.\n" * 50))
    monkeypatch.setattr(sys, "stdin", stdin)
    out = tmp_path / "y.jsonl"
    assert main(["data", "clean", "-", "--no-quality", "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "graft: error: -: not a corpus (JSON lines of documents; line 1 is not JSON); "
        "gather text files with `graft data collect FILES --out -` first"
    ]
    assert list(tmp_path.iterdir()) == []


# ---- damaged and truncated .jsonl.zst -------------------------------------------------------


def _damaged(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(b"garbage")
    return path


def _truncated(tmp_path: Path) -> Path:
    whole = zstandard.ZstdCompressor().compress(_jsonl(2000))
    path = tmp_path / "trunc.jsonl.zst"
    path.write_bytes(whole[: len(whole) // 2])
    return path


_BROKEN = {
    "damaged": (_damaged, "not zstd-compressed, or damaged"),
    "truncated": (_truncated, "truncated zstd stream"),
}
_READERS: dict[str, Callable[[Path], object]] = {
    "read_corpus": lambda path: list(read_corpus(path, Problems())),
    "iter_documents": lambda path: list(iter_documents([path])),
    "count_documents": lambda path: count_documents([path]),
    # dedup's decontamination reads its evaluation files through the same opener.
    "decontaminate": lambda path: list(_eval_texts(path, "text")),
}


@pytest.mark.parametrize("reader", sorted(_READERS))
@pytest.mark.parametrize("broken", sorted(_BROKEN))
def test_a_broken_zstd_file_is_one_data_error(tmp_path: Path, broken: str, reader: str) -> None:
    make, detail = _BROKEN[broken]
    path = make(tmp_path)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {detail}"):
        _READERS[reader](path)


@pytest.mark.parametrize("broken", sorted(_BROKEN))
def test_collect_counts_a_broken_zstd_file_as_unreadable(tmp_path: Path, broken: str) -> None:
    make, detail = _BROKEN[broken]
    path = make(tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(2))
    docs, problems, said = _collect([path, good])
    assert problems.counts == {"unreadable": 1}
    assert said[0].startswith(f"skipped {path}: {detail}")
    assert [d.location for d in docs][-2:] == [f"{good}:1", f"{good}:2"]
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {detail}"):
        _collect([path], strict=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "clean", "{in}", "--no-quality", "--out", "{out}.jsonl"],
        ["data", "report", "{in}", "--out", "{out}.md"],
        ["data", "prepare", "{in}", "--tokenizer", "bytes", "--out", "{out}"],
        ["tokenizer", "train", "{in}", "--vocab-size", "300", "--out", "{out}"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_the_cli_says_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    path = _damaged(tmp_path)
    out = str(tmp_path / "out")
    code = main([a.replace("{in}", str(path)).replace("{out}", out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("graft: error:") and f"{path}: not zstd-compressed" in last


def test_the_cli_collect_skips_a_damaged_zstd_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, good, out = _damaged(tmp_path), tmp_path / "good.jsonl", tmp_path / "w.jsonl"
    good.write_bytes(_jsonl(2))
    assert main(["data", "collect", str(path), str(good), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {path}: not zstd-compressed, or damaged (" in captured.err
    assert "problems: 1 unreadable" in captured.out
    assert len(list(read_corpus(out))) == 2


def test_every_frame_of_a_zstd_file_is_read(tmp_path: Path) -> None:
    """A file of several frames (`cat a.zst b.zst`, pzstd) is the whole of its text."""
    compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(compress(_jsonl(3)) + compress(_jsonl(2)))
    assert len(list(read_corpus(path))) == 5
    assert len(list(iter_documents([path]))) == count_documents([path]) == 5
    docs, problems, _ = _collect([path])
    assert len(docs) == 5 and not problems


# ---- broken CSV ---------------------------------------------------------------------------


def test_an_unterminated_quote_is_a_broken_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text('text,licence\n"unterminated,x\nsecond row,y\nthird,z\n', "utf-8")
    docs, problems, said = _collect([path])
    assert docs == []
    assert problems.counts == {"bad line": 1}
    assert said == [f"skipped {path}#1: broken CSV (unexpected end of data)"]
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}#1: broken CSV"):
        _collect([path], strict=True)


def test_a_row_with_more_fields_than_the_header_is_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text('text,licence\none,MIT\ntwo,MIT,extra\n"a"b,x\nthree,\n', "utf-8")
    docs, problems, said = _collect([path])
    assert [(d.location, d.text) for d in docs] == [(f"{path}#1", "one"), (f"{path}#4", "three")]
    assert problems.counts == {"bad line": 2}
    assert said == [
        f"skipped {path}#2: 3 fields where the header has 2",
        f"skipped {path}#3: broken CSV (',' expected after '\"')",
    ]


def test_the_cli_strict_stops_on_a_broken_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.csv"
    path.write_text('text,licence\n"unterminated,x\nsecond row,y\nthird,z\n', "utf-8")
    out = tmp_path / "bc.jsonl"
    assert main(["data", "collect", str(path), "--out", str(out), "--strict"]) == 2
    assert f"graft: error: {path}#1: broken CSV" in capsys.readouterr().err
    assert not out.exists()
