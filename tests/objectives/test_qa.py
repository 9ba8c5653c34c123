"""Objective `qa`: each window's targets (its answer's tokens, or [CLS] where the answer is not
whole), the loss (CE of start and end over real positions, two units a window, the same for a
window whatever it is batched with), the split by article, and bad questions named or skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from graft.data.qa import Answer, QARecord, answer_positions, qa_windows
from graft.data.tokenizer import Tokenizer, train_tokenizer
from graft.errors import ConfigError, DataError
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.base import Records
from graft.objectives.batch import LossSum, LossTotals
from graft.objectives.qa import AnswerSpans, QAConfig, article_split

CONTEXT = (
    "The fox runs near the river every night. The cat sees a bird in the tree. "
    "The dog keeps the house while the day takes the light over the stone."
)


@pytest.fixture(scope="module")
def tokenizer(text_corpus: Path) -> Tokenizer:
    texts = [p.read_text(encoding="utf-8") for p in sorted(text_corpus.iterdir())]
    return train_tokenizer(texts, "wordpiece", 300, min_frequency=1)


def record(
    question: str, answer: str, n: int = 0, title: str = "", context: str = CONTEXT
) -> QARecord:
    answers = (Answer(answer, context.index(answer)),) if answer else ()
    return QARecord(f"q{n}", title, question, context, answers, f"t.jsonl:{n + 1}")


def span_model(vocab_size: int) -> LanguageModel:
    torch.manual_seed(0)
    config = preset(
        "bert-nano",
        vocab_size=vocab_size,
        max_seq_len=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        mlm_head=False,
        nsp_head=False,
        pooler=False,
        head="span",
        labels=("start", "end"),
    )
    return LanguageModel(config).eval()


def test_targets_point_at_the_answer_or_at_cls(tokenizer: Tokenizer) -> None:
    records = [record("Who sees a bird?", "The cat"), record("What is it?", "", 1)]
    spans = AnswerSpans(records, records[:1], tokenizer, max_len=24, stride=4)
    windows = qa_windows(tokenizer, records[0].question, CONTEXT, max_len=24, stride=4)
    expected = [answer_positions(w, records[0].answers[0]) for w in windows]
    assert 1 <= sum(e != (0, 0) for e in expected) < len(windows)  # some windows lack it
    n = len(windows)
    assert spans.train.targets[:n].tolist() == [list(e) for e in expected]
    assert (spans.train.targets[n:] == 0).all()  # no answer: every window points at [CLS]
    assert spans.train.questions == 2 and len(spans.train) > n


def test_loss_is_start_and_end_cross_entropy_over_real_positions(tokenizer: Tokenizer) -> None:
    records = [record("Who sees a bird?", "The cat"), record("Where does the fox run?", "near", 1)]
    spans = AnswerSpans(records, records, tokenizer, max_len=48, stride=8)
    model = span_model(tokenizer.vocab_size)
    rows = list(range(len(spans.train)))
    batch = spans.batch(spans.train, rows)
    with torch.no_grad():
        out = spans.loss(model, batch)
    assert out.count == 2 * len(rows) == batch.units
    assert batch.lengths is not None and len(set(batch.lengths.tolist())) > 1  # padded rows
    assert batch.token_type_ids is not None and int(batch.token_type_ids.max()) == 1
    total = 0.0
    for row in rows:
        # Each window alone (no padding): what it contributes in the padded batch too.
        alone = spans.batch(spans.train, [row])
        with torch.no_grad():
            logits = model(
                alone.input_ids, token_type_ids=alone.token_type_ids, heads=["classifier"]
            ).class_logits
        assert logits is not None
        target = spans.train.targets[row]
        expected = F.cross_entropy(logits[0, :, 0], target[0]) + F.cross_entropy(
            logits[0, :, 1], target[1]
        )
        assert out.rows is not None
        assert float(out.rows[row]) == pytest.approx(float(expected), rel=1e-4)
        total += float(expected)
    assert float(out.total) == pytest.approx(total, rel=1e-4)
    metrics = spans.metrics(_totals(out), "val")
    assert metrics["val/loss"] == pytest.approx(total / (2 * len(rows)), rel=1e-4)
    assert 0.0 <= metrics["val/span_exact"] <= 1.0


def _totals(out: LossSum) -> LossTotals:
    totals = LossTotals()
    totals.add(out)
    return totals


def test_the_split_keeps_each_article_on_one_side() -> None:
    records = [
        record(f"q{i}?", "", i, title=f"article {i % 5}", context=f"{CONTEXT} {i % 5}")
        for i in range(40)
    ]
    rest, held = article_split(records, 0.2, seed=3)
    assert len(rest) + len(held) == 40 and held
    assert not {r.title for r in rest} & {r.title for r in held}
    assert len({r.title for r in held}) == 1  # 20% of 5 articles
    assert article_split(records, 0.2, seed=3) == (rest, held)
    # Without titles, by context.
    untitled = [record(f"q{i}?", "", i, context=f"{CONTEXT} {i % 4}") for i in range(12)]
    rest, held = article_split(untitled, 0.25, seed=0)
    assert held and not {r.context for r in rest} & {r.context for r in held}
    with pytest.raises(DataError, match="--val"):
        article_split([record("a?", "", 0), record("b?", "", 1)], 0.5, seed=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def records_of(train: Path, *, skip_invalid: bool = False, **more: object) -> Records:
    return Records(
        train_file=train,
        val_file=None,
        val_fraction=0.3,
        text_field="text",
        label_field="label",
        encoding="utf-8",
        skip_invalid=skip_invalid,
        max_train_examples=None,
        seed=0,
        **more,  # type: ignore[arg-type]
    )


def test_build_names_or_skips_a_question_too_long_for_the_window(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    rows = [
        {
            "title": f"t{i}",
            "context": CONTEXT,
            "question": "Who sees a bird?",
            "answers": {"text": ["The cat"], "answer_start": [CONTEXT.index("The cat")]},
        }
        for i in range(6)
    ]
    rows[2]["question"] = " ".join(["where"] * 60)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:3: the question has"):
        QAConfig().build(records_of(path), tokenizer, max_len=40, bidirectional=True)
    task = QAConfig(stride=8).build(
        records_of(path, skip_invalid=True), tokenizer, max_len=40, bidirectional=True
    )
    assert task.labels == ("start", "end")
    assert any("skipped 1 invalid questions" in note for note in task.notes), task.notes
    assert "stride 8" in task.notes[0] and "questions in" in task.notes[0]
    with pytest.raises(ConfigError, match="redact"):
        QAConfig().build(
            records_of(path, redact=("email",)), tokenizer, max_len=40, bidirectional=True
        )
