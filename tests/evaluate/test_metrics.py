"""Tests for graft.evaluate.metrics: hand-computed scores, library cross-checks, and the report
files."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from graft.errors import DataError
from graft.evaluate.metrics import (
    DEFINITIONS,
    MetricInputError,
    classification_metrics,
    confusion_matrix_png,
    entity_metrics,
    generation_metrics,
    language_model_metrics,
    mean_ci95,
    write_report,
)

# Three labels; "c" is never predicted. Rows true, columns predicted (a, b, c):
#   a: [2, 1, 0]   b: [1, 1, 0]   c: [0, 1, 0]
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "a", "b"]


# -- classification ------------------------------------------------------------------------


def test_classification_metrics_match_a_hand_computation() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert m.labels == ["a", "b", "c"]
    assert m.confusion == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.per_class["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m.per_class["b"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5, "support": 2}
    )
    assert m.per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m.macro_precision == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m.macro_recall == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # The mean of per-class F1, not the F1 of macro precision and recall.
    assert m.macro_f1 == pytest.approx((2 / 3 + 2 / 5 + 0) / 3)


def test_explicit_labels_fix_the_matrix_order_and_the_macro_set() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, labels=["c", "b", "a", "d"])
    assert m.labels == ["c", "b", "a", "d"]
    # confusion[i][j] counts true labels[i] predicted as labels[j].
    assert m.confusion == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert m.per_class["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m.macro_f1 == pytest.approx((2 / 3 + 2 / 5) / 4)
    assert m.accuracy == pytest.approx(0.5)


def test_classification_rejects_bad_inputs() -> None:
    with pytest.raises(MetricInputError, match="6 true labels but 5 predicted"):
        classification_metrics(Y_TRUE, Y_PRED[:-1])
    with pytest.raises(ValueError, match="no true labels"):
        classification_metrics([], [])
    with pytest.raises(DataError, match=r"\['c'\] occur in the data"):
        classification_metrics(Y_TRUE, Y_PRED, labels=["a", "b"])


def test_perfect_predictions_score_one() -> None:
    m = classification_metrics(["x", "y", "y"], ["x", "y", "y"])
    assert (m.accuracy, m.macro_precision, m.macro_recall, m.macro_f1) == (1.0, 1.0, 1.0, 1.0)


def test_confusion_matrix_png() -> None:
    data = confusion_matrix_png(classification_metrics(Y_TRUE, Y_PRED))
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


# -- token tagging -------------------------------------------------------------------------


def test_entity_metrics_one_of_two_entities_right() -> None:
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "O"]]
    m = entity_metrics(true, pred)
    assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert m["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_entity_boundaries_count_not_just_tokens() -> None:
    # The predicted PER stops one word short: no entity matches although 3 of 4 tags agree.
    m = entity_metrics([["B-PER", "I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O", "O"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_entity_metrics_read_tags_like_conlleval() -> None:
    # conlleval (seqeval's default mode) starts an entity at an I- tag after O; strict IOB2 would
    # not.
    m = entity_metrics([["O", "I-PER", "O"]], [["O", "B-PER", "O"]])
    assert m["f1"] == 1.0


def test_entity_metrics_validate_lengths() -> None:
    with pytest.raises(MetricInputError, match="sentence 1: 2 true tags but 3 predicted"):
        entity_metrics([["O"], ["O", "B-PER"]], [["O"], ["O", "B-PER", "O"]])
    with pytest.raises(ValueError, match="1 true tag sequences but 2"):
        entity_metrics([["O"]], [["O"], ["O"]])


# -- generation ----------------------------------------------------------------------------


def test_identical_texts_score_perfectly() -> None:
    texts = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog"]
    m = generation_metrics(texts, texts)
    assert m["bleu"] == pytest.approx(100.0)
    assert m["chrf"] == pytest.approx(100.0)
    assert (m["rouge1"], m["rouge2"], m["rougeL"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (m["exact_match"], m["count"]) == (1.0, 2)


def test_partial_match_agrees_with_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "a quick brown fox", "  Hello   world ", "Hello world"]
    refs = ["the cat is on the mat", "the quick brown fox jumps", "Hello world", "hello world"]
    m = generation_metrics(preds, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs)]
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert m[kind] == pytest.approx(sum(s[kind].fmeasure for s in direct) / len(preds))
    # Whitespace is normalised; case is not.
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert m["count"] == 4


def test_rouge_uses_the_stemmer() -> None:
    m = generation_metrics(["the cats running"], ["the cat runs"])
    assert m["rouge1"] == pytest.approx(1.0)
    assert m["exact_match"] == 0.0


def test_generation_rejects_empty_or_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="no predictions"):
        generation_metrics([], [])
    with pytest.raises(MetricInputError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])


# -- language modelling --------------------------------------------------------------------


def test_language_model_metrics_arithmetic() -> None:
    m = language_model_metrics(loss_sum_nats=100.0, tokens=50, text_bytes=200, words=40)
    assert m["loss"] == pytest.approx(2.0)
    assert m["ppl"] == pytest.approx(math.exp(2.0))
    assert m["bits_per_byte"] == pytest.approx(100.0 / math.log(2) / 200)
    assert m["word_ppl"] == pytest.approx(math.exp(2.5))
    assert set(m) <= set(DEFINITIONS)


def test_language_model_metrics_guard_their_denominators() -> None:
    with pytest.raises(MetricInputError, match="words must be positive"):
        language_model_metrics(1.0, tokens=1, text_bytes=1, words=0)
    assert language_model_metrics(1e6, tokens=1, text_bytes=1, words=1)["ppl"] == math.inf


# -- confidence intervals ------------------------------------------------------------------


def test_mean_ci95_matches_a_hand_computation() -> None:
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n), s = 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))


def test_mean_ci95_edges() -> None:
    assert mean_ci95([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(MetricInputError):
        mean_ci95([])
    # df = 40, past the table: t(0.975, 40) = 2.0211; the sample sd of 21 zeros and 20 ones.
    values = [0.0] * 21 + [1.0] * 20
    mean, low, high = mean_ci95(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 40)
    assert (high - low) / 2 == pytest.approx(2.0211 * sd / math.sqrt(41), rel=1e-4)


# -- reports -------------------------------------------------------------------------------


def test_write_report_files(tmp_path: Path) -> None:
    metrics = {**asdict(classification_metrics(Y_TRUE, Y_PRED)), "note": "a|b"}
    samples = [
        {"text": "héllo", "label": "a", "prediction": "b"},
        {"text": "x", "label": "c", "prediction": "b"},
    ]
    json_path, md_path = write_report(tmp_path / "eval", "test", metrics, samples)
    assert (json_path, md_path) == (tmp_path / "eval" / "test.json", tmp_path / "eval" / "test.md")
    assert json.loads(json_path.read_text()) == metrics
    lines = (tmp_path / "eval" / "test_samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == samples
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "test.json",
        "test.md",
        "test_samples.jsonl",
    ]

    md = md_path.read_text()
    assert "| metric | value | definition |" in md
    assert f"| accuracy | 0.5000 | {DEFINITIONS['accuracy']} |" in md
    assert "| note | a\\|b |  |" in md  # a pipe in a value does not split the cell
    assert "| per_class | precision | recall | f1 | support |" in md
    assert "| c | 0.0000 | 0.0000 | 0.0000 | 1 |" in md
    assert "| true \\ predicted | a | b | c |" in md
    assert "| a | 2 | 1 | 0 |" in md


def test_write_report_language_model_definitions_and_no_samples(tmp_path: Path) -> None:
    metrics = {
        **language_model_metrics(100.0, 50, 200, 40),
        "per_type": {"PER": {"f1": 1.0, "support": 3}},
    }
    json_path, md_path = write_report(tmp_path, "lm", metrics)
    md = md_path.read_text()
    for key in ("loss", "ppl", "bits_per_byte", "word_ppl"):
        assert DEFINITIONS[key] in md
    assert "| PER | 1.0000 | 3 |" in md
    assert not (tmp_path / "lm_samples.jsonl").exists()
    assert json.loads(json_path.read_text())["ppl"] == pytest.approx(math.exp(2.0))
    with pytest.raises(MetricInputError, match="plain file name"):
        write_report(tmp_path, "../escape", metrics)


def test_write_report_puts_a_reports_own_definitions_in_the_definition_column(
    tmp_path: Path,
) -> None:
    metrics = {
        "rougeL": 0.5,
        "ended_with_eos": 0.9,
        "definitions": {"ended_with_eos": "share that ended with the end-of-turn token"},
    }
    _, md_path = write_report(tmp_path, "generate", metrics)
    md = md_path.read_text()
    assert "| ended_with_eos | 0.9000 | share that ended with the end-of-turn token |" in md
    assert "## definitions" not in md  # not repeated as a table of its own


class Killed(BaseException):
    """A kill -9 part-way through a report's files, in process."""


def report_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_a_report_cut_short_never_mixes_two_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report stopped between its files left the new test.json beside the last run's test.md
    and samples, and a report without samples kept the last run's. Now the files found come
    from one run, and test.json (written last) only with every file written with it."""
    from graft.evaluate import metrics as module

    first = ({"accuracy": 0.25}, [{"text": "old", "label": "a"}])
    second: tuple[dict[str, float], list[dict[str, str]]] = ({"accuracy": 0.75}, [])
    whole = []
    for metrics, samples in (first, second):
        write_report(tmp_path / f"whole{len(whole)}", "test", metrics, samples)
        whole.append(report_files(tmp_path / f"whole{len(whole)}"))
    real = module.write_atomic
    for cut in (1, 2, None):  # the second report's writes: json and md (in some order), or none
        folder = tmp_path / f"cut{cut}"
        write_report(folder, "test", *first)
        calls = 0

        def cut_short(path: Path, data: str | bytes, cut: int | None = cut) -> Path:
            nonlocal calls
            calls += 1
            if calls == cut:
                raise Killed
            return real(path, data)

        monkeypatch.setattr(module, "write_atomic", cut_short)
        try:
            write_report(folder, "test", *second)
        except Killed:
            assert cut is not None
        monkeypatch.undo()
        left = report_files(folder)
        assert any(left.items() <= files.items() for files in whole), (cut, sorted(left))
        assert "test.json" not in left or left in whole, (cut, sorted(left))
    assert report_files(tmp_path / "cutNone") == whole[1]
