"""`graft eval` on tiny random checkpoints (in-process): the figures agree with one another and with
a direct computation, the reports and their definitions are written, and wrong inputs are refused
with one line naming the file and line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from graft.checkpoint import load_model, save_checkpoint
from graft.cli import main
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import CheckpointError, ConfigError, DataError
from graft.evaluate.evaluate import EvalOptions, default_out_dir, evaluate_checkpoint
from graft.model.config import preset
from graft.model.transformer import LanguageModel

VOCAB = 262  # the bytes tokenizer: 256 bytes and 6 special tokens
EOT_ID = 256


def tiny_checkpoint(
    directory: Path,
    *,
    head: str = "lm",
    labels: tuple[str, ...] = (),
    seed: int = 0,
    always: int | None = None,
) -> Path:
    """A one-layer random model; with `always`, one that predicts that token id at every step."""
    torch.manual_seed(seed)
    model = LanguageModel(
        preset(
            "nano",
            vocab_size=VOCAB,
            max_seq_len=64,
            d_model=32,
            n_layers=1,
            n_heads=2,
            head=head,
            labels=labels,
        )
    )
    if always is not None:
        with torch.no_grad():
            # The final norm then outputs its bias alone, which points at one (tied) embedding row.
            model.model.norm.weight.zero_()
            model.model.norm.bias.fill_(1.0)
            model.model.embed_tokens.weight[always] = 1.0
    return save_checkpoint(
        directory, model=model, tokenizer=bytes_tokenizer(), run_config_yaml="{}"
    )


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("eval") / "lm")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(
        tmp_path_factory.mktemp("eval") / "classifier", head="sequence", labels=("neg", "pos")
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_lm_figures_agree_and_the_report_states_their_definitions(
    lm_checkpoint: Path, tmp_path: Path
) -> None:
    texts = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "Über naïve café — déjà vu.\nSecond line here.",
    ]
    (tmp_path / "a.txt").write_text(texts[0], encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"text": texts[1]}, {"text": "ignored by --limit"}])
    out = tmp_path / "report"
    report = evaluate_checkpoint(
        EvalOptions(
            lm_checkpoint,
            "lm",
            (tmp_path / "a.txt", tmp_path / "b.jsonl"),
            out_dir=out,
            limit=2,
            seq_len=32,
            batch_size=2,
        )
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert metrics["bytes"] == text_bytes and metrics["tokens"] == text_bytes  # one byte, one token
    assert metrics["words"] == sum(len(t.split()) for t in texts) and metrics["documents"] == 2
    loss_sum = metrics["loss"] * metrics["tokens"]
    assert metrics["bits_per_byte"] == pytest.approx(loss_sum / (math.log(2) * metrics["bytes"]))
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["word_ppl"] == pytest.approx(math.exp(loss_sum / metrics["words"]))
    # Each document in its own windows of 32 predicted tokens: 135 bytes take 5, the second 2.
    assert metrics["windows"] == sum(math.ceil(len(t.encode("utf-8")) / 32) for t in texts) == 7

    # The same sum computed directly, as lm-evaluation-harness's rolling windows define it: each
    # document on its own after an end-of-text token; a window predicts the next 32 tokens, and
    # the last remainder is read after the tokens before it (context, not scored twice).
    model, _ = load_model(lm_checkpoint)
    direct = 0.0
    with torch.no_grad():
        for text in texts:
            doc = list(text.encode("utf-8"))
            read = [EOT_ID, *doc]
            for start in range(0, len(doc), 32):
                end = min(start + 32, len(doc))
                first = max(0, end - 32)
                logits = model(torch.tensor([read[first:end]])).logits[0]
                targets = torch.tensor(read[first + 1 : end + 1])
                per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                direct += float(per_token[start - first :].sum())
    assert loss_sum == pytest.approx(direct, rel=1e-5)

    markdown = (out / "lm.md").read_text(encoding="utf-8")
    assert (
        "per token of the model's own tokenizer" in markdown
        and "comparable across tokenizers" in markdown
    )
    assert "bits_per_byte" in metrics["definitions"] and "word_ppl" in metrics["definitions"]


def test_lm_scores_each_document_on_its_own(lm_checkpoint: Path, tmp_path: Path) -> None:
    """No document is context for another: the order of the documents changes nothing."""
    texts = ["A first short document.", "Then a second, a little longer " * 4, "Third."]
    losses = []
    for name, order in (("forward", texts), ("backward", texts[::-1])):
        data = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in order])
        options = EvalOptions(lm_checkpoint, "lm", (data,), out_dir=tmp_path / name, seq_len=16)
        metrics = json.loads(evaluate_checkpoint(options).read_text(encoding="utf-8"))
        losses.append(metrics["loss"] * metrics["tokens"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_classify_accuracy_matches_a_direct_computation(classifier: Path, tmp_path: Path) -> None:
    rows = [
        {"text": f"{word} sample {i}", "label": label}
        for i, (word, label) in enumerate(
            [("good", "pos"), ("bad", "neg"), ("fine", "pos"), ("awful", "neg")] * 3
        )
    ]
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    report = evaluate_checkpoint(
        EvalOptions(classifier, "classify", (data,), out_dir=tmp_path / "out", batch_size=5)
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))

    model, tokenizer = load_model(classifier)
    correct = 0
    with torch.no_grad():
        for row in rows:  # one text at a time: no padding, the last token's hidden state
            ids = torch.tensor([tokenizer.encode(row["text"])])
            logits = model(ids, heads=["classifier"]).class_logits
            predicted = model.config.labels[int(logits.argmax())]
            correct += predicted == row["label"]
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    assert metrics["labels"] == ["neg", "pos"] and sum(map(sum, metrics["confusion"])) == len(rows)
    assert set(metrics["per_class"]) == {"neg", "pos"} and "macro_f1" in metrics
    assert (tmp_path / "out" / "classify_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [
        json.loads(line)
        for line in (tmp_path / "out" / "classify_samples.jsonl").read_text().splitlines()
    ]
    assert samples and {"text", "label", "predicted", "probability"} <= set(samples[0])
    assert 0.5 <= samples[0]["probability"] <= 1.0


class Killed(BaseException):
    """A kill -9 part-way through a report's files, in process."""


def test_a_classify_report_cut_short_never_mixes_two_runs_files(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between classify.json, .md, _samples.jsonl and classify_confusion.png left some
    new and some old. Now classify.json is there only with the files written with it, and
    whatever else is there comes from one run."""
    from graft.evaluate import metrics as module

    rows = [
        {"text": f"{w} text {i}", "label": "pos" if i % 2 else "neg"}
        for i, w in enumerate(["good", "bad", "fine", "awful"] * 3)
    ]
    data = [write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl", rows[:7])]

    def run(out: Path, data: Path) -> None:
        evaluate_checkpoint(EvalOptions(classifier, "classify", (data,), out_dir=out))

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}

    whole = []
    for i, path in enumerate(data):
        run(tmp_path / f"whole{i}", path)
        whole.append(files(tmp_path / f"whole{i}"))
    assert len(whole[1]) == 4 and all(whole[0][n] != whole[1][n] for n in whole[1])
    real = module.write_atomic
    for cut in (1, 2, 3, 4):
        out, calls = tmp_path / f"cut{cut}", 0
        run(out, data[0])

        def cut_short(path: Path, payload: str | bytes, cut: int = cut) -> Path:
            nonlocal calls
            calls += 1
            if calls == cut:
                raise Killed
            return real(path, payload)

        monkeypatch.setattr(module, "write_atomic", cut_short)
        with pytest.raises(Killed):
            run(out, data[1])
        monkeypatch.undo()
        left = files(out)
        assert any(left.items() <= version.items() for version in whole), (cut, sorted(left))
        assert "classify.json" not in left or left in whole, (cut, sorted(left))


def test_classify_refuses_unknown_labels_and_other_heads(
    classifier: Path, lm_checkpoint: Path, tmp_path: Path
) -> None:
    data = write_jsonl(
        tmp_path / "test.jsonl",
        [{"text": "fine", "label": "pos"}, {"text": "meh", "label": "neutral"}],
    )
    with pytest.raises(DataError, match=r"test\.jsonl:2: label 'neutral'"):
        evaluate_checkpoint(EvalOptions(classifier, "classify", (data,), out_dir=tmp_path / "out"))
    with pytest.raises(
        CheckpointError, match="has head 'lm'; --task classify needs a 'sequence' head"
    ):
        evaluate_checkpoint(
            EvalOptions(lm_checkpoint, "classify", (data,), out_dir=tmp_path / "out")
        )


def test_tokens_report_entity_metrics(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(
        tmp_path / "tagger", head="token", labels=("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    )
    conll = "Alice\tB-PER\nvisits\tO\nNew\tB-LOC\nYork\tI-LOC\n\nBob\tB-PER\nstays\tO\n"
    (tmp_path / "test.conll").write_text(conll, encoding="utf-8")
    report = evaluate_checkpoint(
        EvalOptions(checkpoint, "tokens", (tmp_path / "test.conll",), out_dir=tmp_path / "out")
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    assert {"precision", "recall", "f1", "support", "per_type", "word_accuracy"} <= set(metrics)
    assert metrics["support"] == 3 and metrics["count"] == 2
    samples = [
        json.loads(line)
        for line in (tmp_path / "out" / "tokens_samples.jsonl").read_text().splitlines()
    ]
    assert [len(s["predicted"]) for s in samples[:2]] == [4, 2]


def test_generate_stops_at_eos_or_the_limit_and_scores_against_references(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"source": "repeat: a", "target": "aaaa"}] * 2)
    chats = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"instruction": "Say hi", "output": "hi"},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        ],
    )
    says_a = tiny_checkpoint(tmp_path / "a", always=ord("a"))
    report = evaluate_checkpoint(
        EvalOptions(says_a, "generate", (pairs,), out_dir=tmp_path / "out_a", max_new_tokens=4)
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    assert (
        metrics["exact_match"] == 1.0 and metrics["ended_with_eos"] == 0.0 and metrics["count"] == 2
    )
    assert metrics["chrf"] == pytest.approx(100.0)

    stops = tiny_checkpoint(tmp_path / "eos", always=EOT_ID)
    report = evaluate_checkpoint(
        EvalOptions(stops, "generate", (chats, pairs), out_dir=tmp_path / "out_eos", limit=3)
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    assert (
        metrics["ended_with_eos"] == 1.0 and metrics["count"] == 3 and metrics["exact_match"] == 0.0
    )
    samples = [
        json.loads(line)
        for line in (tmp_path / "out_eos" / "generate_samples.jsonl").read_text().splitlines()
    ]
    assert (
        samples[0]["prompt"] == "<|user|>\nSay hi<|endoftext|>\n<|assistant|>\n"
    )  # DEFAULT_CHAT_TEMPLATE
    assert samples[0]["reference"] == "hi" and samples[0]["prediction"] == ""
    assert samples[2]["prompt"] == "repeat: a"

    random_model = tiny_checkpoint(tmp_path / "random", seed=1)
    report = evaluate_checkpoint(
        EvalOptions(
            random_model, "generate", (chats,), out_dir=tmp_path / "out_r", max_new_tokens=8
        )
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    assert 0.0 <= metrics["ended_with_eos"] <= 1.0
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(metrics)


def test_generate_names_the_line_of_a_bad_pair(lm_checkpoint: Path, tmp_path: Path) -> None:
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"source": "a", "target": "b"}, {"source": "a", "target": 3}]
    )
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: field 'target' must be a string"):
        evaluate_checkpoint(
            EvalOptions(lm_checkpoint, "generate", (pairs,), out_dir=tmp_path / "out")
        )


def test_default_out_dir_is_beside_the_run(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints" / "best").mkdir(parents=True)
    assert default_out_dir(tmp_path / "run") == tmp_path / "run" / "eval"
    assert default_out_dir(tmp_path / "run" / "checkpoints" / "best") == tmp_path / "run" / "eval"
    assert default_out_dir(tmp_path / "elsewhere") == Path("eval")


def test_cli_eval_writes_the_report_and_reports_a_missing_file_in_one_line(
    lm_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "doc.txt").write_text("A short text to score.\n", encoding="utf-8")
    assert (
        main(
            [
                "eval",
                str(lm_checkpoint),
                "--task",
                "lm",
                "--data",
                str(tmp_path / "doc.txt"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "bits_per_byte" in capsys.readouterr().out and (tmp_path / "out" / "lm.json").is_file()
    missing = tmp_path / "missing.txt"
    assert main(["eval", str(lm_checkpoint), "--task", "lm", "--data", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graft: error: {missing}: no such file or folder; check --data"


@pytest.mark.parametrize(
    ("task", "option", "flag", "tasks"),
    [
        ("classify", {"stride": 5}, "--stride", "qa"),
        ("classify", {"skip_invalid": True}, "--skip-invalid", "generate or qa"),
        ("lm", {"text_field": "body"}, "--text-field", "classify"),
        ("qa", {"max_new_tokens": 9}, "--max-new-tokens", "generate"),
        ("tokens", {"label_field": "tag"}, "--label-field", "classify"),
    ],
)
def test_an_option_the_task_does_not_read_is_refused_before_the_loading(
    tmp_path: Path, task: str, option: dict[str, object], flag: str, tasks: str
) -> None:
    data = tmp_path / "d.txt"
    data.write_text("x\n")
    options = EvalOptions(tmp_path / "no_checkpoint", task, (data,), **option)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"^{flag} applies to --task {tasks}, not --task {task}$"):
        evaluate_checkpoint(options)
