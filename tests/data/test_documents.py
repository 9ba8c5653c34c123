"""Tests for graft.data.documents: which files are read, pieces, and error messages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from graft.data.documents import count_documents, iter_documents, list_input_files
from graft.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def test_folders_are_walked_sorted_and_filtered(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a" / "z.md", "zed")
    write(tmp_path / "a" / "y.jsonl", '{"text": "first"}\n{"text": "second"}\n')
    write(tmp_path / "c.csv", "ignored,file")
    write(tmp_path / ".hidden" / "secret.txt", "hidden folder")
    write(tmp_path / ".dot.txt", "hidden file")
    docs = list(iter_documents([tmp_path]))
    y = tmp_path / "a" / "y.jsonl"
    assert [d.source for d in docs] == [
        f"{y}:1",
        f"{y}:2",
        str(tmp_path / "a" / "z.md"),
        str(tmp_path / "b.txt"),
    ]
    assert [d.read() for d in docs] == ["first", "second", "zed", "bee"]
    assert docs[0].line == 1 and docs[2].line is None
    # Same listing every time, and a file named twice is read once.
    assert list_input_files([tmp_path, tmp_path / "b.txt"]) == list_input_files([tmp_path])


def test_bom_stripped_and_newlines_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    (doc,) = iter_documents([path])
    assert doc.read() == "one\ntwo\nthree\n"
    record = write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"text": "x\\r\\ny"}\n')
    (doc,) = iter_documents([record])
    assert doc.read() == "x\ny"


def test_pieces_are_bounded_and_cut_between_words(tmp_path: Path) -> None:
    words = [f"word{i}" for i in range(4000)]
    text = " ".join(words) + "\n"
    (doc,) = iter_documents([write(tmp_path / "a.txt", text)])
    pieces = list(doc.pieces(1024))
    assert "".join(pieces) == text
    assert len(pieces) > 10
    assert all(len(p.encode()) <= 2 * 1024 for p in pieces)
    # Every cut falls just before a space, so no word is split.
    assert all(p.startswith(" ") for p in pieces[1:])


@pytest.mark.parametrize("piece_bytes", [16, 17, 64, 1000])
def test_pieces_reassemble_any_text(tmp_path: Path, piece_bytes: int) -> None:
    rng = random.Random(piece_bytes)
    # No spaces at all, so cuts fall back to newlines and then to character boundaries,
    # with multi-byte characters and CR/LF pairs straddling them.
    alphabet = ["a", "é", "日", "😀", "\r", "\n", "\r\n", "x y"]
    text = "".join(rng.choice(alphabet) for _ in range(3000))
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    (doc,) = iter_documents([write(tmp_path / "a.txt", text)])
    assert "".join(doc.pieces(piece_bytes)) == expected
    (rec,) = iter_documents([jsonl(tmp_path / "a.jsonl", {"text": text})])
    assert "".join(rec.pieces(piece_bytes)) == expected


def test_undecodable_bytes_name_file_offset_and_line(tmp_path: Path) -> None:
    content = b"first line\n" * 5 + b"bad \xff here\n" + b"tail\n" * 5
    path = write(tmp_path / "bad.txt", content)
    (doc,) = iter_documents([path])
    with pytest.raises(DataError, match=rf"{path.name}: byte 59 \(line 6\) is not valid UTF-8"):
        list(doc.pieces(16))  # small pieces: the offset must be counted across them


def test_truncated_utf8_at_end_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.txt", "fine é".encode()[:-1])
    (doc,) = iter_documents([path])
    with pytest.raises(DataError, match=r"byte 5 \(line 1\)"):
        doc.read()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"bad\.jsonl:3: invalid JSON"),
        ('{"body": "x"}', r'bad\.jsonl:3: missing the "text" field \(keys: body\)'),
        ('{"text": 5}', r'bad\.jsonl:3: "text" must be a string, got int'),
        ('["text"]', r"bad\.jsonl:3: expected a JSON object"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n\n' + line + "\n")
    docs = iter_documents([path])
    assert next(docs).read() == "a"
    with pytest.raises(DataError, match=expected):
        next(docs)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 300,  # past what a line of 64 characters can take in bytes: never read whole
        "\u00e9" * 100,  # 200 bytes, within that, but 100 characters
    ],
)
def test_an_oversized_record_is_refused(tmp_path: Path, text: str) -> None:
    path = jsonl(tmp_path / "big.jsonl", {"text": "ok"}, {"text": text}, {"text": "after"})
    docs = iter_documents([path], max_record_chars=64)
    assert next(docs).read() == "ok"
    with pytest.raises(DataError, match=r"big\.jsonl:2: record longer than 64 characters"):
        next(docs)
    assert count_documents([path]) == 3
    # A text file is streamed in pieces, however long; a section cut from one is held whole.
    long_text = write(tmp_path / "long.txt", "word " * 100 + "\n= Two =\nshort\n")
    assert len(next(iter_documents([long_text], max_record_chars=64)).read()) == 515
    with pytest.raises(DataError, match=r"long\.txt:1: record longer than 64 characters"):
        list(iter_documents([long_text], split_on="^= ", max_record_chars=64))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file or folder"):
        iter_documents([tmp_path / "nope.txt"])


def test_no_usable_files_lists_suffixes(tmp_path: Path) -> None:
    write(tmp_path / "data.csv", "a,b")
    with pytest.raises(DataError, match=r"no usable files; graft reads \.txt, \.md, \.jsonl"):
        iter_documents([tmp_path])
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        iter_documents([tmp_path / "data.csv"])


def test_empty_documents_skipped_and_all_empty_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "")
    write(tmp_path / "b.md", " \n\t\n")
    jsonl(tmp_path / "c.jsonl", {"text": ""}, {"text": "  \n"})
    with pytest.raises(DataError, match=r"every document is empty; .*\.txt, \.md, \.jsonl"):
        list(iter_documents([tmp_path]))
    write(tmp_path / "d.txt", "real")
    assert [d.read() for d in iter_documents([tmp_path])] == ["real"]


def test_count_documents(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "one")
    write(tmp_path / "empty.txt", "")
    write(tmp_path / "sub" / "b.md", "two")
    write(tmp_path / "c.jsonl", '{"text": "x"}\n\n{"text": "y"}\n{"text": "z"}')
    assert count_documents([tmp_path]) == 5
    assert count_documents([tmp_path / "a.txt"]) == 1
    with pytest.raises(DataError, match="no such file or folder"):
        count_documents([tmp_path / "missing"])


def test_text_file_is_not_read_until_pieces_are_asked_for(tmp_path: Path) -> None:
    path = write(tmp_path / "late.txt", b"ok " + b"\xff" * 10)
    (doc,) = iter_documents([path])  # listing and the blank check do not decode
    assert doc.size == 13
    with pytest.raises(DataError):
        doc.read()


def test_a_zstd_corpus_reads_as_its_jsonl(tmp_path: Path) -> None:
    """`graft data collect --out docs.jsonl.zst` output goes straight into prepare."""
    import zstandard

    lines = "".join(
        json.dumps({"text": f"doc {i} \u00e9", "source": "txt"}) + "\n" for i in range(3)
    )
    (tmp_path / "a.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.compress(lines.encode("utf-8")))
    plain = [d.read() for d in iter_documents([tmp_path / "a.jsonl"])]
    packed = iter_documents([tmp_path / "b.jsonl.zst"])
    assert [d.read() for d in packed] == plain == ["doc 0 \u00e9", "doc 1 \u00e9", "doc 2 \u00e9"]
    assert count_documents([tmp_path / "b.jsonl.zst"]) == 3
    assert list_input_files([tmp_path]) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl.zst"]
