"""Smoke test of bench/data_prepare.py on a corpus of a few kilobytes: every stage runs in its own
process for the byte tokenizer and a freshly trained BPE, the figures are positive, and the
encode stage (the ceiling) encodes exactly the batches prepare_shards encodes. No timing is
asserted (benchmarks are scripts)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from graft.data import shards
from graft.data.tokenizer import Tokenizer, bytes_tokenizer


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("data_prepare")


def make_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    words = "the quick brown fox jumps over the lazy dog naïve café 日本 <|endoftext|>".split()
    rng = np.random.default_rng(0)
    for i in range(3):
        text = " ".join(rng.choice(words, size=400).tolist())
        (corpus / f"part{i}.txt").write_text(text, encoding="utf-8")
    records = [{"text": " ".join(rng.choice(words, size=30).tolist())} for _ in range(20)]
    (corpus / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return corpus


def test_runs_every_stage(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = make_corpus(tmp_path)
    out = tmp_path / "results.json"
    argv = ["--inputs", str(corpus), "--tokenizer", "bytes", "--tokenizer", "bpe:300"]
    rows = bench.main([*argv, "--repeats", "1", "--json", str(out)])
    assert [row.tokenizer for row in rows] == ["bytes", "bpe:300 (trained on the inputs)"]
    for row in rows:
        assert all(len(v) == 1 and v[0] > 0 for v in row.mb_s.values())
        assert math.isfinite(row.ratio) and row.ratio > 0 and row.peak_rss_mb > 0
        assert row.tokens == row.encode_tokens + row.documents  # the same ids, plus EOTs
        assert row.documents == 23
    printed = capsys.readouterr().out
    assert "CPU:" in printed and "other processes used" in printed and "warning" not in printed
    assert json.loads(out.read_text())["rows"][1]["tokens"] == rows[1].tokens


def test_encode_stage_batches_as_prepare_does(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path)
    # Small pieces and batches, so the corpus makes many of each.
    monkeypatch.setattr(shards, "_PIECE_BYTES", 64)
    monkeypatch.setattr(shards, "_BATCH_CHARS", 300)
    seen: list[list[str]] = []
    encode = Tokenizer.encode_batch_arrays

    def spy(self: Tokenizer, texts: Sequence[str], dtype: np.dtype | type) -> list[np.ndarray]:
        seen.append(list(texts))
        return encode(self, texts, dtype)

    monkeypatch.setattr(Tokenizer, "encode_batch_arrays", spy)
    shards.prepare_shards([corpus], bytes_tokenizer(), tmp_path / "out", progress=False)
    batches = bench.pieces_in_batches([corpus])
    assert batches == seen and len(batches) > 10
    assert all(sum(map(len, batch)) <= 300 for batch in batches)
