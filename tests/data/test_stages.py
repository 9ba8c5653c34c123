"""graft.data.stages: a step's statistics file is read as its corpus's history only while it
belongs to that corpus, however the step (or a hand) left the pair."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from graft.data import stages
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, CorpusWriter, StageStats, read_corpus
from graft.data.report import write_report
from graft.data.stages import read_stats, run_stage


class Keep:
    """A step keeping the first `n` documents."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stats = StageStats("keep")

    def __call__(self, docs: Iterable[CorpusDoc]) -> Iterator[CorpusDoc]:
        for doc in docs:
            self.stats.docs_in += 1
            if self.stats.docs_out < self.n:
                self.stats.docs_out += 1
                yield doc


class Killed(BaseException):
    """What a kill -9 between the corpus's write and its statistics' leaves, in process."""


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    with CorpusWriter(path) as writer:
        for i in range(6):
            writer.write(CorpusDoc(f"document number {i}", "txt", f"d{i}.txt"))
    return path


def test_a_step_stopped_after_its_corpus_leaves_no_history_of_the_last_run(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new corpus beside the previous run's statistics: report read them as its steps (6
    documents out of a corpus of 2)."""
    out = tmp_path / "out.jsonl"
    run_stage(Keep(6), [source], out)
    assert [s["docs_out"] for s in read_stats([out])] == [6]

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(stages, "write_atomic", killed)
    with pytest.raises(Killed):
        run_stage(Keep(2), [source], out)
    monkeypatch.undo()
    assert len(list(read_corpus(out))) == 2 and Path(f"{out}{STATS_SUFFIX}").exists()
    assert read_stats([out]) == []
    page, _ = write_report([out])
    text = page.read_text(encoding="utf-8")
    assert "| keep | 6 | 6 |" not in text and "Pipeline steps" not in text
    assert f"`{out}{STATS_SUFFIX}` is not read" in text  # said, not silently dropped


def test_a_corpus_replaced_by_other_means_loses_its_statistics(
    source: Path, tmp_path: Path
) -> None:
    """`--out - > OUT` or a copy over OUT leaves OUT's old statistics beside a new file."""
    out = tmp_path / "out.jsonl"
    run_stage(Keep(3), [source], out)
    out.write_bytes(source.read_bytes())
    assert read_stats([out]) == []
    # The next step's history starts at its input, not at the stale file beside it.
    run_stage(Keep(6), [out], tmp_path / "next.jsonl")
    assert [s["docs_out"] for s in read_stats([tmp_path / "next.jsonl"])] == [6]


def test_the_statistics_name_their_corpus_and_a_step_in_place_keeps_its_history(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    run_stage(Keep(5), [source], out)
    run_stage(Keep(4), [out], out)  # in place: the history is the input's as it was
    steps = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text(encoding="utf-8"))
    assert [s["docs_out"] for s in steps] == [5, 4]
    assert steps[-1]["output_file"]["size"] == out.stat().st_size
    assert [s["docs_out"] for s in read_stats([out])] == [5, 4]


def test_statistics_written_before_they_named_their_corpus_are_read(
    source: Path, tmp_path: Path
) -> None:
    earlier = [{"stage": "collect", "docs_in": 6, "docs_out": 6}]
    Path(f"{source}{STATS_SUFFIX}").write_text(json.dumps(earlier), encoding="utf-8")
    assert read_stats([source]) == earlier
