"""Reading a run's metrics.jsonl back: a line cut short by a crash is dropped, a damaged line is
one DataError naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.errors import DataError
from graft.run_files import read_metrics


def test_a_line_cut_short_at_the_end_is_dropped(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "lr": 0.5}\n\n{"step": 2, "lr"', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "lr": 0.5}]


def test_no_file_is_no_rows(tmp_path: Path):
    assert read_metrics(tmp_path / "metrics.jsonl") == []


@pytest.mark.parametrize(
    ("line", "why"),
    [("{oops", "not a JSON line"), ("[1, 2]", "expected a JSON object, found list")],
)
def test_a_damaged_line_is_one_error_naming_it(tmp_path: Path, line: str, why: str):
    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{{"step": 1}}\n{line}\n{{"step": 3}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: {why}") as caught:
        read_metrics(path)
    assert "\n" not in str(caught.value)
