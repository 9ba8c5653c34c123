"""`graft data report`: the figures of a small corpus written by CorpusWriter, and the pipeline
steps of its statistics file, come out right in the markdown; the histogram PNG is beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graft.cli import main
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, CorpusWriter
from graft.data.report import SAMPLE, CorpusProfile, quantile, write_report

DOCS = [
    CorpusDoc("Hello world, this is text.", "html", "https://example.org/a", lang="en"),
    CorpusDoc("Grüße aus Köln", "html", "https://Example.org/b?x=1", lang="de", licence="CC-BY"),
    CorpusDoc("Hello world, this is text.", "html", "https://other.net/c", lang="en"),
    CorpusDoc("one two three four five six seven", "txt", "/data/notes/a.txt", licence="CC-BY"),
    CorpusDoc("a", "jsonl", "/data/dump.jsonl:7", lang="en"),
    CorpusDoc("", "txt", "/data/notes/empty.txt"),
]
STEPS = [
    {
        "stage": "collect",
        "docs_in": 8,
        "docs_out": 7,
        "bytes_in": 5_000_000,
        "bytes_out": 4_000_000,
        "seconds": 2.5,
        "rejected": {"not text": 1},
        "notes": {},
    },
    {
        "stage": "clean",
        "docs_in": 7,
        "docs_out": 6,
        "bytes_in": 4_000_000,
        "bytes_out": 3_500_000,
        "seconds": 0.0,
        "rejected": {"too short": 1},
        "notes": {"chars_removed": 12},
    },
]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with CorpusWriter(path) as writer:
        for doc in DOCS:
            writer.write(doc)
    Path(f"{path}{STATS_SUFFIX}").write_text(json.dumps(STEPS), encoding="utf-8")
    return path


def test_the_report_states_the_corpus_figures_and_its_steps(
    corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "report", str(corpus)]) == 0
    report = Path(f"{corpus}.report.md")
    assert f"report: {report}" in capsys.readouterr().out
    text = report.read_text(encoding="utf-8")
    lines = set(text.splitlines())
    texts = [d.text for d in DOCS]
    assert "| documents | 6 |" in lines
    assert f"| characters | {sum(map(len, texts))} |" in lines
    assert f"| words | {sum(len(t.split()) for t in texts)} |" in lines
    assert f"| bytes | {sum(len(t.encode()) for t in texts)} |" in lines  # ü, ß, ö: 2 bytes each
    assert "| duplicate texts | 1 (16.7%) |" in lines and "| empty documents | 1 |" in lines
    lengths = [len(t) for t in texts]
    p10, median, p90 = np.percentile(lengths, [10, 50, 90])
    assert (
        f"Characters per document: median {median:,.1f}, p10 {p10:,.1f}, p90 {p90:,.1f} (exact)."
        in lines
    )
    # languages, "unknown" where none; kinds; hosts (case folded) and folders; licences
    assert {"| en | 3 | 50.0% |", "| de | 1 | 16.7% |", "| unknown | 2 | 33.3% |"} <= lines
    assert {"| html | 3 | 50.0% |", "| txt | 2 | 33.3% |", "| jsonl | 1 | 16.7% |"} <= lines
    assert {"| example.org | 2 | 33.3% |", "| other.net | 1 | 16.7% |"} <= lines
    assert {"| /data/notes | 2 | 33.3% |", "| /data | 1 | 16.7% |"} <= lines
    assert {"| CC-BY | 2 | 33.3% |", "| none stated | 4 | 66.7% |"} <= lines
    # the pipeline steps: MB/s is MB in over seconds; a step with no time has no speed
    assert "| collect | 8 | 7 | 5.00 | 4.00 | 2.5 | 2.00 |" in lines
    assert "| clean | 7 | 6 | 4.00 | 3.50 | 0.0 | - |" in lines
    assert {"| collect | not text | 1 | 12.5% |", "| clean | too short | 1 | 14.3% |"} <= lines
    assert "- clean: chars_removed: 12" in lines
    png = corpus.parent / "corpus.jsonl.report.lengths.png"
    assert "![document lengths](corpus.jsonl.report.lengths.png)" in lines
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in corpus.parent.iterdir() if p.name.startswith(".")]  # no temporaries


def test_out_and_a_corpus_without_statistics(corpus: Path, tmp_path: Path) -> None:
    Path(f"{corpus}{STATS_SUFFIX}").unlink()
    out = tmp_path / "reports" / "r.md"
    assert main(["data", "report", str(corpus), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Pipeline steps" not in text and (out.parent / "r.lengths.png").is_file()


def test_a_bad_line_is_skipped_and_counted(corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text(encoding="utf-8") + "not json\n", encoding="utf-8")
    out, profile = write_report([bad])
    assert profile.documents == len(DOCS) and "| lines skipped | 1 |" in out.read_text()


def test_quantiles_are_numpy_s_and_the_sample_stays_bounded() -> None:
    values = [3, 1, 4, 1, 5, 9, 2, 6]
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert quantile(sorted(values), q) == pytest.approx(np.percentile(values, q * 100))
    profile = CorpusProfile()
    for i in range(SAMPLE + 50):
        profile.add(CorpusDoc("x" * (i % 7), "txt", "a.txt"))
    assert len(profile.sample) == SAMPLE and not profile.exact
    assert sum(profile.histogram) == profile.documents == SAMPLE + 50
