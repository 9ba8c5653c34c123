"""Question answering evaluation: SQuAD's normalisation, exact match and F1 on hand-checked
answers; the span search (valid spans only, the best of them, from hand-made logits); and `graft
finetune qa` then `graft eval --task qa` on a tiny encoder, in-process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from graft.checkpoint import save_checkpoint
from graft.cli import main
from graft.data.qa import qa_windows, read_qa
from graft.data.tokenizer import train_tokenizer
from graft.evaluate.metrics import (
    normalize_answer,
    squad_exact_match,
    squad_f1,
    squad_metrics,
)
from graft.evaluate.qa import best_span
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.train.metrics_log import read_metrics


def test_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    # Only whole words are articles; punctuation goes before articles are looked for.
    assert normalize_answer("Theatre (a)") == "theatre"
    assert normalize_answer("anthem") == "anthem"
    assert normalize_answer("  ") == ""


def test_exact_match_and_f1_by_hand() -> None:
    assert squad_exact_match("the Eiffel tower", ["Eiffel Tower."]) == 1.0
    assert squad_exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred {cat, sat}, gold {cat, sat, on, mat}: precision 1, recall 1/2, F1 2/3.
    assert squad_f1("the cat sat", ["a cat sat on the mat"]) == pytest.approx(2 / 3)
    # The best over the gold answers.
    assert squad_f1("the cat sat", ["a dog", "cat sat"]) == 1.0
    assert squad_exact_match("cat", ["a dog", "The cat"]) == 1.0
    # Repeated words count as often as both sides hold them: pred {x, x, y} gold {x, y, z}.
    assert squad_f1("x x y", ["x y z"]) == pytest.approx(2 / 3)
    assert squad_f1("", ["cat"]) == 0.0
    # No gold answer (SQuAD v2): only an empty answer is right.
    assert squad_exact_match("", []) == squad_f1("", []) == 1.0
    assert squad_f1("cat", []) == 0.0
    scores = squad_metrics(["Eiffel", "the cat sat"], [["Eiffel Tower"], ["cat sat", "dog"]])
    # EM: 0 and 1; F1: 2/3 (1 of 1 predicted, 1 of 2 gold) and 1.
    assert scores == {
        "exact_match": pytest.approx(50.0),
        "f1": pytest.approx(100 * (2 / 3 + 1) / 2),
        "count": 2,
    }


def test_best_span_is_the_best_valid_one() -> None:
    # Positions 0-2 are framing and question (None), 3-22 context, 23 the final [SEP].
    offsets = [None] * 3 + [(i, i + 1) for i in range(20)] + [None]
    start = torch.full((24,), -5.0)
    end = torch.full((24,), -5.0)
    start[0] = end[0] = 100.0  # [CLS] stands for no context: never a span
    start[20], end[4] = 10.0, 10.0  # the best start and end: the end is before the start
    start[6], end[16] = 9.0, 9.0  # 11 tokens: too long for max_answer_tokens 5
    start[17], end[18] = 6.0, 5.0  # valid, 2 tokens
    assert best_span(start, end, offsets, max_answer_tokens=5) == (17, 18, 11.0)
    assert best_span(start, end, offsets, max_answer_tokens=11) == (6, 16, 18.0)
    found = best_span(start, end, offsets, max_answer_tokens=1)
    assert found is not None and found[0] == found[1]
    # Nothing stands for context: no span.
    assert best_span(start, end, [None] * 24, max_answer_tokens=5) is None
    # n_best limits the candidates: with 1, only the top start (20) and end (4), never valid.
    assert best_span(start, end, offsets, max_answer_tokens=30, n_best=1) is None


WORDS = "fox dog cat bird tree house river stone light night day".split()


def write_questions(path: Path, n: int, seed: int) -> Path:
    """Questions whose answer is the word after "the": a pattern a tiny model can start to learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        at = rng.randrange(len(words))
        words[at] = "the " + words[at]
        context = " ".join(words) + "."
        answer = words[at].split()[1]
        start = context.index("the ") + 4
        rows.append(
            {
                "id": f"q{i}",
                "title": f"article {i % 6}",
                "context": context,
                "question": "which word follows the?",
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_finetune_qa_then_eval_writes_a_squad_report(tmp_path: Path) -> None:
    train = write_questions(tmp_path / "train.jsonl", 40, seed=0)
    test = write_questions(tmp_path / "test.jsonl", 12, seed=1)
    texts = [json.loads(line)["context"] for line in train.read_text().splitlines()]
    tokenizer = train_tokenizer([*texts, "which word follows the?"], "wordpiece", 120, 1)
    torch.manual_seed(0)
    model = LanguageModel(
        preset(
            "bert-nano",
            vocab_size=tokenizer.vocab_size,
            max_seq_len=32,
            d_model=32,
            n_layers=2,
            n_heads=2,
            mlm_head=False,
            nsp_head=False,
            pooler=False,
        )
    )
    base = save_checkpoint(
        tmp_path / "base", model=model, tokenizer=tokenizer, run_config_yaml="{}"
    )
    run = tmp_path / "run"
    args = ["finetune", "qa", "--init", str(base), "--train", str(train), "--out", str(run)]
    args += ["--objective.stride=6", "--train.max_steps=2", "--train.eval_every=2"]
    args += ["--train.batch_size=8", "--train.progress=false", "--optim.warmup_steps=1"]
    assert main(args) == 0
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "val/span_exact" in r]
    assert evals and 0.0 <= evals[-1]["val/span_exact"] <= 1.0

    out = tmp_path / "eval"
    checkpoint = run / "checkpoints" / "last"
    args = ["eval", str(checkpoint), "--task", "qa", "--data", str(test), "--out", str(out)]
    assert main([*args, "--max-answer-tokens", "3"]) == 0
    report = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    # The stride the checkpoint was trained with; the answer limit given.
    assert report["run"]["stride"] == 6 and report["run"]["max_answer_tokens"] == 3
    records, _ = read_qa(test)
    windows = sum(
        len(qa_windows(tokenizer, r.question, r.context, max_len=32, stride=6)) for r in records
    )
    assert report["count"] == 12 and report["windows"] == windows > 12
    assert "SQuAD exact match" in report["definitions"]["exact_match"]
    samples = [json.loads(x) for x in (out / "qa_samples.jsonl").read_text().splitlines()]
    by_id = {r.id: r for r in records}
    for sample in samples:
        record = by_id[sample["id"]]
        start = sample["start_char"]
        if sample["predicted"]:  # cut from the context at its offsets
            assert record.context[start : start + len(sample["predicted"])] == sample["predicted"]
            assert len(sample["predicted"].split()) <= 3
    scores = squad_metrics([s["predicted"] for s in samples], [s["answers"] for s in samples])
    assert len(samples) == 12  # every question is a sample at this size
    assert scores["exact_match"] == pytest.approx(report["exact_match"])
    assert scores["f1"] == pytest.approx(report["f1"])

    # The server answers each question as eval did: the same windows (the stride the checkpoint
    # was trained with), the same span, the same offsets.
    from fastapi.testclient import TestClient

    from graft.infer.engine import Engine, EngineConfig
    from graft.serve import create_app, describe_model
    from graft.serve.model_info import load_model_for_serving

    served, served_tokenizer, source = load_model_for_serving(checkpoint, "cpu")
    info = describe_model(served, served_tokenizer, source, name="qa", created=0)
    client = TestClient(create_app(Engine(served, served_tokenizer, EngineConfig()), info))
    for sample in samples:
        record = by_id[sample["id"]]
        body = {"question": record.question, "context": record.context, "max_answer_tokens": 3}
        answer = client.post("/v1/qa", json=body).json()
        assert answer["answer"] == sample["predicted"], answer
        assert record.context[answer["start"] : answer["end"]] == answer["answer"]
        fits = qa_windows(tokenizer, record.question, record.context, max_len=32, stride=6)
        assert answer["windows"] == len(fits) and answer["usage"]["prompt_tokens"] == sum(
            len(w) for w in fits
        )
    too_long = {"question": "which word " * 40, "context": records[0].context}
    refused = client.post("/v1/qa", json=too_long)
    assert refused.status_code == 400 and "question" in refused.json()["error"]["message"]
