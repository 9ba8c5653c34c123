"""seq2seq on a decoder: a pair framed as a one-turn conversation, the loss on the target and its
end-of-turn token only (exact positions), eval asking for the target in the very ids training
put before it, and a tiny fine-tune on gzipped parallel files that learns to stop."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from graft.checkpoint import save_checkpoint
from graft.cli import main as cli_main
from graft.config import load_finetune_config
from graft.data.chat import DEFAULT_CHAT_TEMPLATE
from graft.data.records import IGNORE_INDEX, Message
from graft.data.tokenizer import Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import ConfigError
from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
from graft.evaluate.prompts import generation_examples
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.base import Records
from graft.objectives.seq2seq import Seq2Seq, Seq2SeqConfig
from graft.serve.prompts import chat_prompt_ids
from graft.train.finetune import finetune

EOT = 256  # the bytes tokenizer's <|endoftext|>, graft's end-of-turn token


def records(train: Path, val: Path | None = None) -> Records:
    return Records(
        train_file=train,
        val_file=val,
        val_fraction=0.5,
        text_field="text",
        label_field="label",
        encoding="utf-8",
        skip_invalid=False,
        max_train_examples=None,
        seed=0,
    )


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def build(tokenizer: Tokenizer, data: Path) -> Seq2Seq:
    task = Seq2SeqConfig().build(records(data, data), tokenizer, max_len=64, bidirectional=False)
    assert isinstance(task.objective, Seq2Seq) and task.labels == ()
    return task.objective


def test_only_the_target_and_its_end_of_turn_token_are_scored(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    data = write_jsonl(tmp_path / "p.jsonl", [{"source": "Hallo", "target": "Hi"}])
    objective = build(tokenizer, data)
    # Set on the tokenizer, so every checkpoint of the run carries the template it trained with.
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    # graft's template written out by hand, byte ids and the end-of-turn id: an independent oracle.
    prompt = [*b"<|user|>\nHallo", EOT, *b"\n<|assistant|>\n"]
    assert objective.train.ids[0] == [*prompt, *b"Hi", EOT, *b"\n"]
    batch = objective.batch(objective.train, [0])
    assert batch.targets is not None
    targets = batch.targets[0].tolist()
    scored = [t for t, label in enumerate(targets) if label != IGNORE_INDEX]
    # Position t predicts token t + 1: the last prompt token predicts 'H', then 'i', then the end.
    assert scored == [len(prompt) - 1, len(prompt), len(prompt) + 1]
    assert [targets[t] for t in scored] == [*b"Hi", EOT]
    assert batch.n_targets == 3  # the units the loop divides the summed loss by


def test_eval_asks_for_the_target_in_the_ids_training_put_before_it(tmp_path: Path) -> None:
    # A unigram tokenizer encodes the rendered prompt differently whole than piece by piece, so
    # this fails if either side frames or encodes a pair its own way.
    corpus = ["Ein Hund läuft über die Wiese.", "A dog runs across the meadow."] * 20
    tokenizer = train_tokenizer(iter(corpus), kind="unigram", vocab_size=300, min_frequency=1)
    rows = [
        {"source": "Ein Hund läuft.", "target": "A dog runs."},
        {"source": "Die Wiese.", "target": "The meadow."},
    ]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    objective = build(tokenizer, data)
    examples, skipped = generation_examples([data], tokenizer)
    assert skipped == 0 and [e.reference for e in examples] == [r["target"] for r in rows]
    train = objective.train
    for ids, labels, example, row in zip(train.ids, train.labels, examples, rows, strict=True):
        reply = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert list(example.ids) == ids[:reply]
        assert example.prompt.endswith("<|assistant|>\n")
        # ... and so do the server and `graft chat`, though the prompt encodes otherwise whole.
        assert chat_prompt_ids(tokenizer, [Message("user", row["source"])]) == ids[:reply]
        assert tokenizer.encode(example.prompt) != ids[:reply]


def test_source_and_target_langs_go_together() -> None:
    with pytest.raises(ConfigError, match="give both source_lang and target_lang"):
        load_finetune_config("seq2seq", None, ["objective.source_lang=en"])
    with pytest.raises(ConfigError, match="source_lang"):
        load_finetune_config(
            "seq2seq", None, ["objective.source_lang=../en", "objective.target_lang=de"]
        )
    config = load_finetune_config(
        "seq2seq", None, ["objective.source_lang=en", "objective.target_lang=de"]
    )
    assert isinstance(config.objective, Seq2SeqConfig)
    assert config.objective.langs == ("en", "de") and config.train.monitor == "val/loss"


def test_a_tiny_fine_tune_on_parallel_files_learns_the_target_and_to_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = LanguageModel(
        preset("nano", vocab_size=262, max_seq_len=48, d_model=32, n_layers=2, n_heads=2)
    )
    base = save_checkpoint(
        tmp_path / "base", model=model, tokenizer=bytes_tokenizer(), run_config_yaml="{}"
    )
    words = "cat dog sun sea red map owl ink".split()
    for split, n in (("train", 32), ("val", 8)):
        (tmp_path / f"{split}.en").write_text("".join(f"{words[i % 8]}\n" for i in range(n)))
        (tmp_path / f"{split}.de.gz").write_bytes(gzip.compress(b"ja\n" * n))
    config = load_finetune_config(
        "seq2seq",
        None,
        [
            f"train.init={base}",
            f"data.train_file={tmp_path / 'train'}",
            f"data.val_file={tmp_path / 'val'}",
            "objective.source_lang=en",
            "objective.target_lang=de",
            f"train.out_dir={tmp_path / 'run'}",
            "train.max_steps=20",
            "train.eval_every=20",
            "train.batch_size=8",
            "train.progress=false",
            "model.dropout=0",
            "optim.lr=1e-2",
            "optim.warmup_steps=1",
        ],
    )
    notes: list[str] = []
    finetune(config, echo=notes.append)
    assert "32 training and 8 validation pairs" in notes
    report = evaluate_checkpoint(
        EvalOptions(
            tmp_path / "run",
            "generate",
            (tmp_path / "val",),
            source_lang="en",
            target_lang="de",
            out_dir=tmp_path / "eval",
            max_new_tokens=6,
            limit=4,
        )
    )
    metrics = json.loads(report.read_text(encoding="utf-8"))
    # Greedy decoding wrote the target and then the end-of-turn token, before the length limit.
    assert metrics["ended_with_eos"] == 1.0 and metrics["exact_match"] == 1.0
    assert metrics["count"] == 4 and metrics["sentence_bleu"] == pytest.approx(100.0)
    sample = json.loads((tmp_path / "eval" / "generate_samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"] == "<|user|>\ncat<|endoftext|>\n<|assistant|>\n"
    assert sample["prediction"] == "ja" and sample["sentence_chrf"] == pytest.approx(100.0)
    # `graft generate --chat` asks in the same ids, so it answers the same; greedy or by beams.
    for decoding in (["--temperature", "0"], ["--beams", "2"]):
        argv = ["generate", str(tmp_path / "run"), "--chat", "--prompt", "cat", *decoding]
        assert cli_main([*argv, "--max-new-tokens", "6"]) == 0
        assert capsys.readouterr().out == "ja\n"
    # Without --chat the text is continued as it is, and the command says how to ask instead.
    assert (
        cli_main(["generate", str(tmp_path / "run"), "--prompt", "cat", "--temperature", "0"]) == 0
    )
    err = capsys.readouterr().err
    assert "fine-tuned on chat turns (seq2seq); --chat asks it the way it was trained" in err
    assert cli_main(["generate", str(tmp_path / "run"), "--system", "Be brief."]) == 2
    assert "--system is a turn of a chat prompt: give --chat too" in capsys.readouterr().err
