"""Smoke test of bench/data_pipeline.py at a tiny size: the corpus is generated with its planted
kinds, every stage runs in its own process and reports documents, MB/s, a ratio to plain I/O and
its peak memory, and the chained run writes what the stages wrote one by one. No timing is
asserted (benchmarks are scripts)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("data_pipeline")


def test_the_generated_corpus_mostly_passes_clean_and_plants_its_kinds(bench: ModuleType) -> None:
    from graft.data.clean import CleanConfig, clean_text

    kinds = [kind for kind, _ in bench.documents(400, seed=1)]
    assert kinds.count("original") > 300 and set(kinds) <= {"original", *bench.PLANTED}
    config = CleanConfig(langid=False)
    for kind, text in bench.documents(400, seed=1):
        if kind in ("original", "exact", "near"):
            assert clean_text(config, text).rejected is None, (kind, text)
    first = dict(bench.documents(2000, seed=2))  # the last of each kind
    for kind in bench.LOW_QUALITY:
        assert clean_text(config, first[kind]).rejected is not None, kind


def test_every_stage_runs_in_its_own_process(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    keep = tmp_path / "work"
    report = bench.main(
        ["--docs", "300", "--workers", "1", "--keep", str(keep), "--json", str(out)]
    )
    printed = capsys.readouterr().out
    rows = {row.stage: row for row in report.rows}
    assert list(rows) == list(bench.STAGES)
    for row in report.rows:
        for value in (row.mb_in, row.seconds, row.mb_s, row.ratio, row.peak_mb, row.base_mb):
            assert math.isfinite(value) and value > 0, (row.stage, value)
        assert row.peak_mb >= row.base_mb
    assert rows["io"].ratio == 1.0 and rows["io"].docs_in == rows["io"].docs_out == 300
    assert rows["collect"].docs_out == 300
    low = sum(report.planted[kind] for kind in bench.LOW_QUALITY)
    assert rows["clean"].docs_in - rows["clean"].docs_out >= low
    assert rows["dedup"].docs_out <= rows["dedup"].docs_in - report.planted["exact"]
    assert rows["chained"].docs_out == rows["dedup"].docs_out and report.same_output
    assert report.within_budget and report.table in printed and "Must-show" in printed
    assert "CPU: " in report.machine and (keep / "raw.jsonl").is_file()
    assert json.loads(out.read_text())["rows"][0]["stage"] == "io"
