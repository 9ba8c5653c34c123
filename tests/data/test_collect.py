"""`graft data collect` on local inputs: every format, provenance, bad inputs counted with where
they are and the run going on, strict mode, the CLI, and main-text extraction from saved pages."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from graft.cli import main
from graft.data.collect import CollectOptions, collect, collect_to, extract_html, list_sources
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, Problems, read_corpus, text_sha256
from graft.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "html"
PAGES = sorted(FIXTURES.glob("*.html"))

ARTICLE = FIXTURES / "news_article.html"
ARTICLE_SENTENCE = "The small harbour town of Kellwick switched on a row of underwater turbines"


def _collect(sources: list[Path | str], **options: Any) -> tuple[list[CorpusDoc], Problems]:
    problems = Problems()
    docs = list(collect(sources, problems=problems, options=CollectOptions(**options)))
    return docs, problems


def _write_warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as handle:
        writer = WARCWriter(handle, gzip=path.suffix == ".gz")
        pages = [
            ("https://example.org/article", "text/html; charset=utf-8", ARTICLE.read_bytes()),
            ("https://example.org/notes.txt", "text/plain", b"Plain notes from the archive.\n"),
            ("https://example.org/logo.png", "image/png", b"\x89PNG\r\n\x1a\n\0\0"),
        ]
        for url, content_type, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], "HTTP/1.1")
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=headers
            )
            writer.write_record(record)
        # A request record and an archived 404 page are not documents.
        writer.write_record(writer.create_warc_record("https://example.org/x", "request"))
        missing = StatusAndHeaders("404 Not Found", [("Content-Type", "text/html")], "HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(
                "https://example.org/gone",
                "response",
                payload=io.BytesIO(b"<html><body><p>Not here</p></body></html>"),
                http_headers=missing,
            )
        )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """One small file of every format collect reads, in a folder with a subfolder."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"\xef\xbb\xbfA plain text file.\r\nSecond line.\n")
    (root / "b.md").write_text("# Notes\n\nSome *markdown*.\n", encoding="utf-8")
    (root / "sub" / "c.rst").write_text("Title\n=====\n\nSome reStructuredText.\n", "utf-8")
    (root / "d.html").write_bytes(ARTICLE.read_bytes())
    lines = [
        {"text": "first jsonl document", "license": "MIT"},
        {"text": "second jsonl document", "id": 2},
    ]
    (root / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), "utf-8")
    data = "".join(json.dumps({"text": f"zst document {i}"}) + "\n" for i in range(3))
    (root / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data.encode()))
    with (root / "g.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerows([["id", "text"], ["1", "a row, with a comma"], ["2", "two\nlines"]])
    (root / "h.tsv").write_text("text\tlicence\ntab separated\tCC-BY-4.0\n", "utf-8")
    table = pa.table({"text": ["parquet one", None, "parquet three"], "n": [1, 2, 3]})
    pq.write_table(table, root / "i.parquet", row_group_size=2)
    _write_warc(root / "j.warc.gz")
    (root / "ignored.bin").write_bytes(b"\0\1\2")  # unknown suffix inside a folder: skipped
    (root / ".hidden.txt").write_text("hidden", "utf-8")
    return root


def test_every_format_is_read_with_its_provenance(inputs: Path) -> None:
    docs, problems = _collect([inputs], licence="CC0-1.0")
    assert not problems, problems.summary()
    where = {d.location: d for d in docs}
    assert where[str(inputs / "a.txt")].text == "A plain text file.\nSecond line.\n"
    assert where[str(inputs / "a.txt")].source == "txt"
    assert where[str(inputs / "b.md")].source == "md"
    assert where[str(inputs / "sub" / "c.rst")].source == "rst"
    html = where[str(inputs / "d.html")]
    assert html.source == "html" and ARTICLE_SENTENCE in html.text
    assert "Privacy policy" not in html.text
    assert [where[f"{inputs / 'f.jsonl.zst'}:{i}"].text for i in (1, 2, 3)] == [
        f"zst document {i}" for i in range(3)
    ]
    assert where[f"{inputs / 'i.parquet'}#1"].text == "parquet one"
    assert where[f"{inputs / 'i.parquet'}#3"].text == "parquet three"  # row 2 is null
    assert f"{inputs / 'i.parquet'}#2" not in where
    warc = where["https://example.org/article"]
    assert warc.source == "warc" and ARTICLE_SENTENCE in warc.text
    assert warc.fetched_at and warc.fetched_at.startswith("20")
    assert where["https://example.org/notes.txt"].text == "Plain notes from the archive.\n"
    assert "https://example.org/logo.png" not in where and "https://example.org/gone" not in where
    assert where[f"{inputs / 'e.jsonl'}:1"].licence == "MIT"  # its own licence wins
    assert where[f"{inputs / 'h.tsv'}#1"].licence == "CC-BY-4.0"
    others = [
        d for d in docs if d.location not in (f"{inputs / 'e.jsonl'}:1", f"{inputs / 'h.tsv'}#1")
    ]
    assert {d.licence for d in others} == {"CC0-1.0"}
    assert len(docs) == 16
    assert not any("hidden" in d.location or "ignored" in d.location for d in docs)


def test_jsonl_csv_and_licences(inputs: Path) -> None:
    docs, problems = _collect(
        [inputs / "e.jsonl", inputs / "g.csv", inputs / "h.tsv"], licence="CC0-1.0"
    )
    assert not problems
    assert [(d.location, d.text, d.licence) for d in docs] == [
        (f"{inputs / 'e.jsonl'}:1", "first jsonl document", "MIT"),
        (f"{inputs / 'e.jsonl'}:2", "second jsonl document", "CC0-1.0"),
        (f"{inputs / 'g.csv'}#1", "a row, with a comma", "CC0-1.0"),
        (f"{inputs / 'g.csv'}#2", "two\nlines", "CC0-1.0"),
        (f"{inputs / 'h.tsv'}#1", "tab separated", "CC-BY-4.0"),
    ]
    assert [d.source for d in docs] == ["jsonl", "jsonl", "csv", "csv", "tsv"]
    assert all(d.fetched_at is None for d in docs)


def test_the_text_field_and_column_are_chosen(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"body": "from body", "text": 3}\n', "utf-8")
    (tmp_path / "b.csv").write_text("body,text\nfrom column,x\n", "utf-8")
    docs, problems = _collect([tmp_path], text_field="body", text_column="body")
    assert [d.text for d in docs] == ["from body", "from column"] and not problems
    docs, problems = _collect([tmp_path / "a.jsonl"])
    assert docs == [] and dict(problems.counts) == {"bad line": 1}
    long = "word " * 60_000  # past the csv module's default 128 KiB field limit
    (tmp_path / "c.csv").write_text(f'text\n"{long}"\n', "utf-8")
    docs, problems = _collect([tmp_path / "c.csv"])
    assert [d.text for d in docs] == [long] and not problems


def test_sources_are_deterministic_and_globs_expand(inputs: Path) -> None:
    problems = Problems()
    listed = list(list_sources([inputs], problems))
    assert listed == sorted(listed, key=lambda p: Path(p).relative_to(inputs).parts)
    assert listed[-1] == inputs / "sub" / "c.rst"  # a folder sorts by its name, like a file
    # The same file twice (directly and through a glob) is read once.
    globbed = list(list_sources([inputs / "a.txt", str(inputs / "*.txt")], problems))
    assert globbed == [inputs / "a.txt"]
    assert list(list_sources([str(inputs / "**" / "*.rst")], problems)) == [
        inputs / "sub" / "c.rst"
    ]
    assert not problems


def test_bad_inputs_are_counted_with_where_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine", "utf-8")
    (tmp_path / "binary.txt").write_bytes(b"GIF89a\0\0\1\2 not text")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok".encode("utf-8") + b" na\xefve")
    (tmp_path / "empty.html").write_text(
        "<html><head><script>var a = 1;</script></head><body><div></div></body></html>", "utf-8"
    )
    (tmp_path / "lines.jsonl").write_text(
        '{"text": "kept"}\n{broken\n[1, 2]\n{"title": "no text"}\n\n{"text": "kept too"}\n',
        "utf-8",
    )
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    (tmp_path / "cols.csv").write_text("id,body\n1,x\n", "utf-8")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    problems = Problems()
    sources: list[str | Path] = [
        tmp_path,
        tmp_path / "missing.txt",
        str(tmp_path / "*.nothing"),
        tmp_path / "notes.docx",
    ]
    docs = list(collect(sources, problems=problems))
    assert sorted(d.text for d in docs) == ["fine", "kept", "kept too", "ok"]
    assert dict(problems.counts) == {
        "binary": 1,
        "not utf-8": 2,
        "no text": 1,
        "bad line": 3,
        "missing column": 1,
        "missing": 2,
        "unsupported": 1,
    }


def test_problem_messages_name_the_file_line_and_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes(b"abc na\xefve")
    (tmp_path / "lines.jsonl").write_text('{"text": "a"}\n{broken\n', "utf-8")
    (tmp_path / "cols.csv").write_text("id,body\n1,x\n", "utf-8")
    said: list[str] = []
    problems = Problems(say=said.append)
    list(collect([tmp_path], problems=problems))
    assert said == [
        f"skipped {tmp_path / 'cols.csv'}: no \"text\" column (columns: 'id', 'body'); "
        "set --text-column",
        f"skipped {tmp_path / 'latin1.txt'}: byte 6 is not valid UTF-8 (invalid continuation "
        "byte); save it as UTF-8",
        f"skipped {tmp_path / 'lines.jsonl'}:2: not JSON (Expecting property name enclosed in "
        "double quotes at column 2)",
    ]


def test_strict_makes_the_first_problem_fatal(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine", "utf-8")
    (tmp_path / "b.jsonl").write_text("nope\n", "utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl:1: not JSON"):
        list(collect([tmp_path], problems=Problems(strict=True)))


def test_parquet_streams_in_batches_and_reports_a_missing_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i}" for i in range(2500)]  # more than one record batch
    pq.write_table(pa.table({"content": texts}), tmp_path / "t.parquet")
    docs, problems = _collect([tmp_path / "t.parquet"], text_column="content")
    assert [d.text for d in docs] == texts
    assert docs[-1].location == f"{tmp_path / 't.parquet'}#2500"
    docs, problems = _collect([tmp_path / "t.parquet"])
    assert docs == [] and dict(problems.counts) == {"missing column": 1}
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    docs, problems = _collect([tmp_path / "bad.parquet"])
    assert dict(problems.counts) == {"unreadable": 1}


def test_a_broken_warc_is_one_problem(tmp_path: Path) -> None:
    # Five words make an ARC header line to warcio: a .warc must hold WARC records.
    (tmp_path / "a.warc").write_bytes(b"this is not an archive\r\n\r\n")
    (tmp_path / "b.warc").write_bytes(b"\x8f\x01 random bytes, not a record at all\r\n\r\n")
    _write_warc(tmp_path / "c.warc.gz")
    said: list[str] = []
    problems = Problems(say=said.append)
    docs = list(collect([tmp_path], problems=problems))
    assert [d.location for d in docs] == [
        "https://example.org/article",
        "https://example.org/notes.txt",
    ]
    assert dict(problems.counts) == {"unreadable": 2}
    assert said[0] == (
        f"skipped {tmp_path / 'a.warc'}: not a WARC archive, or damaged at its start "
        "(ArchiveLoadFailed)"
    )


def test_the_process_pool_keeps_the_order(tmp_path: Path) -> None:
    # Pages interleaved with text files: the pool (2 workers, 2 documents a job, so 11
    # documents start it) must hand back every document in input order, as this process does.
    for i, page in enumerate(PAGES):
        (tmp_path / f"{i}a.html").write_bytes(page.read_bytes())
        (tmp_path / f"{i}b.txt").write_text(f"text {i}", "utf-8")
    (tmp_path / "9.html").write_text("<html><body></body></html>", "utf-8")
    alone, problems_alone = _collect([tmp_path], workers=1)
    pooled, problems_pooled = _collect([tmp_path], workers=2, chunksize=2)
    assert [d.location for d in pooled] == [d.location for d in alone]
    assert [d.text for d in pooled] == [d.text for d in alone]
    assert len(alone) == 2 * len(PAGES)
    assert problems_alone.counts == problems_pooled.counts == {"no text": 1}


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_main_text_is_kept_and_boilerplate_dropped(page: Path) -> None:
    expected = json.loads(page.with_suffix(".expected.json").read_text(encoding="utf-8"))
    text = extract_html(page.read_bytes())
    assert text is not None
    missing = [s for s in expected["must_contain"] if s not in text]
    leaked = [s for s in expected["must_not_contain"] if s in text]
    assert not missing, f"main text lost: {missing}"
    assert not leaked, f"boilerplate kept: {leaked}"


# A page with a few accented letters among ASCII and no <meta> charset: a charset detector
# cannot tell the Latin single-byte charsets apart in it (it read Latin-1 as cp1250: "naďve").
KEEPER = (
    "<p>The old lighthouse keeper climbed the spiral stairs every evening at dusk, counting each "
    "of the steps as his father had done before him. Café owners in the village below said you "
    "could set a clock by the lamp.</p><p>He wrote in a careful hand, naïve perhaps, but never "
    "careless, and the logbook filled with notes about the wind, the waves and the ships that "
    "passed the rocks.</p>"
)
KEEPER_RU = (
    "<p>Старый смотритель маяка каждый вечер поднимался по винтовой лестнице и считал ступени, "
    "как это делал его отец. Жители деревни говорили, что по его лампе можно сверять часы.</p>"
) * 2


def _page(body: str) -> str:
    return (
        "<!DOCTYPE html><html><head><title>t</title></head><body><article><h1>Keeper</h1>"
        f"{body}</article></body></html>"
    )


def test_an_html_response_is_decoded_by_its_http_charset(tmp_path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    latin1 = _page(KEEPER).encode("latin-1")
    records = [
        ("https://example.org/latin1", "text/html; charset=ISO-8859-1", latin1),
        # Browsers read a Latin-1 label as windows-1252: 0x93/0x94 are curly quotes.
        (
            "https://example.org/quotes",
            "text/html; charset=iso-8859-1",
            latin1.replace(b"Caf\xe9 owners", b"\x93Caf\xe9\x94 owners"),
        ),
        # Few accents among ASCII: only the header can say that 0xf8 is "ř", not "ø".
        (
            "https://example.org/czech",
            "text/html; charset=windows-1250",
            _page(KEEPER.replace("Café owners", "Dvořák’s fans").replace("ï", "i")).encode(
                "cp1250"
            ),
        ),
        # An unknown label, or bytes not in the stated charset, leave the bytes to trafilatura.
        ("https://example.org/unknown", "text/html; charset=x-no-such", _page(KEEPER).encode()),
        ("https://example.org/wrong", "text/html; charset=utf-8", latin1),
        # A server's default charset that the page contradicts: valid UTF-8, or the page's own
        # <meta>, wins (it was read as Latin-1: "CafÃ©").
        ("https://example.org/utf8", "text/html; charset=ISO-8859-1", _page(KEEPER).encode()),
        (
            "https://example.org/meta",
            "text/html; charset=ISO-8859-1",
            _page(KEEPER)
            .replace("<title>", '<meta charset="iso-8859-2"><title>')
            .replace("Café owners", "Zażółć owners")
            .replace("ï", "i")
            .encode("iso-8859-2"),
        ),
    ]
    with (tmp_path / "a.warc.gz").open("wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for url, content_type, body in records:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], "HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body), http_headers=headers
                )
            )
    docs, problems = _collect([tmp_path / "a.warc.gz"], workers=1)
    assert not problems, problems.summary()
    text = {d.location.rsplit("/", 1)[1]: d.text for d in docs}
    assert "Café owners" in text["latin1"] and "naïve perhaps" in text["latin1"]
    assert "\u201cCafé\u201d owners" in text["quotes"]
    assert "Dvořák’s fans" in text["czech"]
    for name in ("unknown", "wrong", "utf8"):
        assert "Café owners" in text[name] and "naïve perhaps" in text[name], name
    assert "Zażółć owners" in text["meta"]


def test_a_page_without_a_charset_is_read_as_browsers_read_it(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_bytes(_page(KEEPER).encode("latin-1"))
    (tmp_path / "b.html").write_bytes(_page(KEEPER.replace("é", "\u2019")).encode("cp1252"))
    # windows-1252 is only the reading of a Western page: a Cyrillic one keeps its detected
    # charset, and a declared charset wins.
    (tmp_path / "c.html").write_bytes(_page(KEEPER_RU).encode("cp1251"))
    declared = _page(KEEPER).replace("<head>", '<head><meta charset="iso-8859-15">')
    (tmp_path / "d.html").write_bytes(declared.replace("é", "€").encode("iso-8859-15"))
    docs, problems = _collect([tmp_path], workers=1)
    assert not problems, problems.summary()
    text = {Path(d.location).name: d.text for d in docs}
    assert "Café owners" in text["a.html"] and "naïve perhaps" in text["a.html"]
    assert "Caf\u2019 owners" in text["b.html"] and "naïve perhaps" in text["b.html"]
    assert "Старый смотритель маяка" in text["c.html"]
    assert "Caf€ owners" in text["d.html"] and "naïve perhaps" in text["d.html"]
    assert extract_html(_page(KEEPER).encode("latin-1")) == text["a.html"]


def test_there_are_enough_fixture_pages() -> None:
    assert len(PAGES) >= 5
    assert all(p.with_suffix(".expected.json").is_file() for p in PAGES)


# ---- the library entry point and the CLI -----------------------------------------------------


def test_collect_to_writes_the_corpus_and_its_stats(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "docs.jsonl.zst"
    stats = collect_to([inputs], out, CollectOptions(licence="CC0-1.0"))
    docs = list(read_corpus(out))
    assert len(docs) == stats.docs_out > 0
    assert all(d.sha256 == text_sha256(d.text) for d in docs)
    assert dict(stats.rejected) == {} and stats.docs_in == stats.docs_out == 16
    assert stats.bytes_out == sum(len(d.text.encode()) for d in docs)
    assert stats.bytes_in > 0
    saved = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text(encoding="utf-8"))
    assert saved[0]["stage"] == "collect" and saved[0]["rejected"] == {}
    assert saved[0]["docs_out"] == len(docs)


def test_cli_end_to_end(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs.jsonl"
    argv = ["data", "collect", str(inputs / "sub"), str(inputs / "*.md"), str(inputs / "h.tsv")]
    assert main([*argv, "--out", str(out), "--licence", "CC-BY-4.0", "--no-progress"]) == 0
    docs = list(read_corpus(out))
    assert [d.source for d in docs] == ["rst", "md", "tsv"]
    assert [d.licence for d in docs] == ["CC-BY-4.0", "CC-BY-4.0", "CC-BY-4.0"]
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("collect: 3 documents")
    assert "problems: none" in summary[0]
    stats = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text(encoding="utf-8"))
    assert stats[0]["docs_out"] == 3


def test_the_output_is_never_read_as_input(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine", "utf-8")
    out = tmp_path / "docs.jsonl"
    for _ in range(2):  # the second run finds the first run's output in the folder
        stats = collect_to([tmp_path], out)
        assert stats.docs_out == 1 and [d.text for d in read_corpus(out)] == ["fine"]


def test_cli_reports_problems_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_text("fine", "utf-8")
    (tmp_path / "b.csv").write_text("x\n1\n", "utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["data", "collect", str(tmp_path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "problems: 1 missing column" in captured.out
    assert f'skipped {tmp_path / "b.csv"}: no "text" column' in captured.err
    assert [d.text for d in read_corpus(out)] == ["fine"]


def test_cli_strict_fails_and_leaves_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("fine", "utf-8")
    (src / "b.txt").write_bytes(b"\xc3\x28 broken")
    out = tmp_path / "out" / "docs.jsonl"
    code = main(["data", "collect", str(src), "--out", str(out), "--strict", "--no-progress"])
    assert code == 2
    assert "graft: error:" in capsys.readouterr().err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no partial, no temp


def test_cli_without_sources_or_with_a_bad_output_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "collect", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "nothing to collect" in capsys.readouterr().err
    assert main(["data", "collect", str(tmp_path), "--out", str(tmp_path / "o.txt")]) == 2
    assert ".jsonl or .jsonl.zst" in capsys.readouterr().err
    missing = tmp_path / "urls.txt"
    assert (
        main(["data", "collect", "--urls", str(missing), "--out", str(tmp_path / "o.jsonl")]) == 2
    )
    assert f"{missing}: no such URL list" in capsys.readouterr().err


def test_collecting_nothing_is_an_error_that_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "docs.jsonl"
    args = ["data", "collect", str(tmp_path / "missing.txt"), "--out", str(out), "--no-progress"]
    assert main(args) == 2
    assert "nothing collected: every source failed or was empty" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
