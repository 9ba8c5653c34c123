"""Fine-tuning a classifier through `graft finetune classify` (in-process, tiny models): full,
frozen and LoRA adaptation; LoRA adapters saved in PEFT's format and merged exactly; bad records
refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from graft.adapt import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, has_lora, merge_lora
from graft.checkpoint import load_model
from graft.cli import main
from graft.train.metrics_log import read_metrics

TINY = [
    "--model.max_seq_len=32",
    "--model.d_model=32",
    "--model.n_layers=2",
    "--model.n_heads=2",
    "--train.batch_size=8",
    "--train.max_steps=2",
    "--train.eval_every=2",
    "--train.eval_batches=1",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]
FINE = [
    "--train.max_steps=40",
    "--train.eval_every=20",
    "--train.progress=false",
    "--optim.lr=3e-3",
    "--train.patience=10",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "base"
    assert (
        main(
            ["pretrain", "--data", str(bytes_data), "--out", str(out), "--model.preset=nano", *TINY]
        )
        == 0
    )
    return out / "checkpoints" / "last"


def write_records(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Two labels with disjoint vocabularies: learnable in a few dozen steps by a tiny model."""
    rng = random.Random(seed)
    words = {"pos": "good great fine nice happy".split(), "neg": "bad awful poor sad grim".split()}
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        rows.append({"text": " ".join(rng.choice(words[label]) for _ in range(6)), "label": label})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_finetune_classify_learns_and_keeps_the_best_checkpoint(
    base: Path, tmp_path: Path, method: str
) -> None:
    records = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(base),
                "--train",
                str(records),
                "--out",
                str(out),
                "--method",
                method,
                *FINE,
            ]
        )
        == 0
    )
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val/acc" in r]
    assert evals[-1]["val/acc"] >= 0.9, evals
    model, _ = load_model(out / "checkpoints" / "best")
    assert model.config.head == "sequence" and model.config.labels == ("neg", "pos")
    if method == "lora":
        assert (out / "checkpoints" / "best" / ADAPTER_CONFIG_FILE).is_file()
        assert (out / "checkpoints" / "best" / ADAPTER_WEIGHTS_FILE).is_file()
        assert has_lora(model)


def test_lora_adapter_merges_exactly(base: Path, tmp_path: Path) -> None:
    records = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(base),
                "--train",
                str(records),
                "--out",
                str(out),
                "--method",
                "lora",
                *FINE,
            ]
        )
        == 0
    )
    model, tokenizer = load_model(out / "checkpoints" / "last")
    config = json.loads((out / "checkpoints" / "last" / ADAPTER_CONFIG_FILE).read_text())
    assert (
        config["peft_type"] == "LORA"
        and config["r"] == 8
        and config["base_model_name_or_path"] == str(base)
    )
    texts = ["good great fine nice", "bad awful poor grim sad"]

    def logits() -> torch.Tensor:
        rows = []
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text)])
            rows.append(model(ids, heads=["classifier"]).class_logits)
        return torch.cat(rows)

    assert any(
        p.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name
    )  # trained, not the zero init
    with torch.no_grad():
        before = logits()
        merge_lora(model)
        assert not has_lora(model)
        after = logits()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_a_merged_and_exported_lora_classifier_gives_the_unmerged_logits(
    base: Path, tmp_path: Path
) -> None:
    import transformers

    records = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(base),
                "--train",
                str(records),
                "--out",
                str(out),
                "--method",
                "lora",
                *FINE,
            ]
        )
        == 0
    )
    checkpoint = out / "checkpoints" / "last"
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "--format",
                "hf",
                "--merge-lora",
                "--out",
                str(tmp_path / "hf"),
            ]
        )
        == 0
    )
    model, tokenizer = load_model(checkpoint)  # the adapter applied, not merged
    assert has_lora(model)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf"
    ).eval()
    for text in ["good great fine nice", "bad awful poor grim sad", "fine sad"]:
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            unmerged = model(ids, heads=["classifier"]).class_logits
            theirs = exported(input_ids=ids).logits
        torch.testing.assert_close(theirs, unmerged, atol=1e-5, rtol=0)


def test_freeze_trains_only_the_last_block_and_the_head(base: Path, tmp_path: Path) -> None:
    from graft.adapt import apply_adaptation
    from graft.config import AdaptConfig

    model, _ = load_model(base)
    apply_adaptation(model, AdaptConfig(method="freeze", trainable_blocks=1))
    trainable = {
        name.split(".")[0]
        + "."
        + name.split(".")[1]
        + ("." + name.split(".")[2] if name.startswith("model.layers") else "")
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"model.layers.1", "model.norm"}


def test_a_validation_label_never_seen_in_training_is_named(
    base: Path, tmp_path: Path, capsys
) -> None:
    records = write_records(tmp_path / "train.jsonl")
    val = tmp_path / "val.jsonl"
    val.write_text(
        '{"text": "good", "label": "pos"}\n{"text": "meh", "label": "neutral"}\n', encoding="utf-8"
    )
    code = main(
        [
            "finetune",
            "classify",
            "--init",
            str(base),
            "--train",
            str(records),
            "--val",
            str(val),
            "--out",
            str(tmp_path / "run"),
            *FINE,
        ]
    )
    assert code == 2
    assert f"{val}:2: label 'neutral' is not one of the model's labels (neg, pos)" in (
        capsys.readouterr().err
    )


def write_conll(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Sentences where capitalised city names are LOC and people names PER."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        city, person = rng.choice(["Paris", "Lima", "Oslo"]), rng.choice(["Ann", "Bob", "Eve"])
        words = [(person, "B-PER"), ("went", "O"), ("to", "O"), (city, "B-LOC"), ("today", "O")]
        lines += [f"{w} X X {t}" for w, t in words] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_finetune_tokens_reports_entity_f1(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "tokens",
                "--init",
                str(base),
                "--train",
                str(write_conll(tmp_path / "train.txt")),
                "--out",
                str(out),
                *FINE,
            ]
        )
        == 0
    )
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val/entity_f1" in r]
    assert evals[-1]["val/entity_f1"] > evals[0]["val/entity_f1"]
    model, _ = load_model(out / "checkpoints" / "best")
    assert model.config.head == "token" and model.config.labels == ("O", "B-LOC", "B-PER")


def test_finetune_tokens_names_a_bad_conll_line(base: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Ann X X B-PER\nwent X O\n", encoding="utf-8")
    assert (
        main(
            [
                "finetune",
                "tokens",
                "--init",
                str(base),
                "--train",
                str(bad),
                "--out",
                str(tmp_path / "r"),
                *FINE,
            ]
        )
        == 2
    )
    assert f"{bad}:2" in capsys.readouterr().err


def test_finetune_instruct_trains_on_replies_and_stores_the_template(
    bytes_data: Path, tmp_path: Path
) -> None:
    long_base = tmp_path / "base"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(bytes_data),
                "--out",
                str(long_base),
                "--model.preset=nano",
                *[a if a != "--model.max_seq_len=32" else "--model.max_seq_len=96" for a in TINY],
            ]
        )
        == 0
    )
    base = long_base / "checkpoints" / "last"
    records = [
        {"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}
        for w in ["cat", "dog", "sun", "sea", "red", "map", "owl", "ink"] * 4
    ]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "instruct",
                "--init",
                str(base),
                "--train",
                str(path),
                "--out",
                str(out),
                "--train.max_steps=6",
                "--train.eval_every=3",
                "--train.progress=false",
            ]
        )
        == 0
    )
    model, tokenizer = load_model(out / "checkpoints" / "last")
    assert model.config.head == "lm" and tokenizer.chat_template is not None
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"]


def test_export_merges_a_lora_adapter_into_a_sequence_classifier(
    base: Path, tmp_path: Path, capsys
) -> None:
    import transformers

    records = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(base),
                "--train",
                str(records),
                "--out",
                str(out),
                "--method",
                "lora",
                *FINE,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "hf")]) == 2
    assert "--merge-lora" in capsys.readouterr().err
    assert (
        main(["export", str(out), "--out", str(tmp_path / "hf"), "--merge-lora"]) == 0
    )  # verified by default
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert loaded.config.id2label == {0: "neg", 1: "pos"}


def test_a_tokenizer_without_pad_gets_one_and_the_embedding_grows(tmp_path: Path, capsys) -> None:
    """A GPT-2-style Hugging Face directory whose tokenizer has no pad token (as GPT-2's has
    none)."""
    import transformers

    from graft.data.tokenizer import bytes_tokenizer

    data = json.loads(bytes_tokenizer().backend.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|pad|>"]
    hf_dir = tmp_path / "gpt2"
    hf_dir.mkdir()
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    hf_tok.save_pretrained(hf_dir)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=len(hf_tok), n_positions=64, n_embd=32, n_layer=1, n_head=2
        )
    ).save_pretrained(hf_dir)
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(hf_dir),
                "--train",
                str(write_records(tmp_path / "t.jsonl")),
                "--out",
                str(out),
                "--train.max_steps=4",
                "--train.eval_every=2",
                "--train.progress=false",
            ]
        )
        == 0
    )
    assert "had no pad token; added <|pad|>" in capsys.readouterr().out
    model, tokenizer = load_model(out / "checkpoints" / "last")
    assert tokenizer.pad_id == len(hf_tok) and model.config.vocab_size == len(hf_tok) + 1


def test_a_context_longer_than_the_model_is_refused(base: Path, tmp_path: Path, capsys) -> None:
    records = write_records(tmp_path / "train.jsonl")
    assert (
        main(
            [
                "finetune",
                "classify",
                "--init",
                str(base),
                "--train",
                str(records),
                "--out",
                str(tmp_path / "run"),
                "--train.seq_len=64",
                *FINE,
            ]
        )
        == 2
    )
    assert "train.seq_len (64) exceeds model.max_seq_len (32)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_head_lr_scale_multiplies_the_new_heads_step(base: Path, tmp_path: Path) -> None:
    """Adam's first step moves every coordinate with a gradient by the LR: the body by lr, the
    new classifier by lr * head_lr_scale (two runs from the same seed, so the same initial head:
    their classifiers differ by (10 - 1) * lr)."""
    records = write_records(tmp_path / "train.jsonl")
    one_step = ["--train.max_steps=1", "--optim.warmup_steps=0", "--optim.schedule=constant"]
    one_step += ["--optim.weight_decay=0", "--optim.lr=1e-3", *TINY[4:5]]
    trained = {}
    for scale in (1, 10):
        out = tmp_path / f"x{scale}"
        args = ["finetune", "classify", "--init", str(base), "--out", str(out)]
        args += ["--train", str(records), "--train.progress=false", *one_step]
        assert main([*args, f"--optim.head_lr_scale={scale}"]) == 0
        trained[scale] = dict(load_model(out / "checkpoints" / "last")[0].named_parameters())
    before, _ = load_model(base)
    body = max(
        float((trained[10][name] - param).abs().max()) for name, param in before.named_parameters()
    )
    assert body == pytest.approx(1e-3, rel=1e-3)
    head = trained[10]["classifier.weight"] - trained[1]["classifier.weight"]
    assert float(head.abs().max()) == pytest.approx(9e-3, rel=1e-3)


def test_head_lr_scale_without_a_new_head_is_refused(
    bytes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pretrain", "--data", str(bytes_data), "--out", str(tmp_path / "r"), *TINY]
    assert main([*args, "--model.preset=nano", "--optim.head_lr_scale=5"]) == 2
    assert "optim.head_lr_scale: this model trains no new head" in capsys.readouterr().err


def test_refused_runs_leave_nothing_and_the_train_file_may_come_from_a_recipe(
    base: Path, tmp_path: Path, capsys
) -> None:
    records = write_records(tmp_path / "train.jsonl", n=40)
    common = ["finetune", "classify", "--init", str(base), "--train.progress=false"]
    # Privacy's checks (a DP batch larger than the data) come after the model is built: the
    # run folder used to exist by then, holding config.yaml.
    out = tmp_path / "dp"
    dp = ["--dp.epsilon=8", "--dp.batch=512", "--objective.labels=[neg, pos]"]
    code = main([*common, "--train", str(records), "--out", str(out), *dp])
    assert code == 2 and "dp.batch" in capsys.readouterr().err
    assert not out.exists()
    # An --out that is a file is refused before the loading, in one line.
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    assert main([*common, "--train", str(records), "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"graft: error: {afile}: is a file; a folder is expected here"]
    # A recipe that names the training records needs no --train.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  train_file: {records}\n")
    run = tmp_path / "run"
    argv = [*common, "--config", str(recipe), "--out", str(run), "--train.max_steps=1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "last").is_dir()
    assert main([*common, "--out", str(tmp_path / "none")]) == 2
    assert "data.train_file: give the training records (--train FILE" in capsys.readouterr().err
    # graft eval of a run folder scores its last checkpoint, and its report says so.
    ev = tmp_path / "ev"
    assert (
        main(["eval", str(run), "--task", "classify", "--data", str(records), "--out", str(ev)])
        == 0
    )
    report = json.loads((ev / "classify.json").read_text())
    assert report["run"]["checkpoint"] == str(run / "checkpoints" / "last")
    assert (
        main(["eval", str(run), "--task", "classify", "--data", str(records), "--out", str(afile)])
        == 2
    )
    assert capsys.readouterr().err.strip().endswith("is a file; a folder is expected here")
    # Without --out a fine-tuning run goes under runs/TASK, not pre-training's runs/pretrain.
    from graft.config import load_finetune_config

    assert load_finetune_config("classify").train.out_dir == Path("runs/classify")


@pytest.mark.parametrize(
    "targets, refusal",
    [
        (("q_proj", "lm_head"), "lm_head is a head's layer; LoRA adapts the blocks' layers: "),
        (("nope",), "nope is no linear layer of a block"),
    ],
)
def test_lora_on_a_head_or_an_unknown_layer_is_refused(
    base: Path, targets: tuple[str, ...], refusal: str
) -> None:
    """An adapter on lm_head never trained (the fused loss reads the head's base weight) and,
    with tied embeddings, merging it moved the input embeddings too."""
    from graft.adapt import apply_adaptation
    from graft.config import AdaptConfig
    from graft.errors import ConfigError

    model, _ = load_model(base)
    with pytest.raises(ConfigError, match="^adapt.lora_targets: " + refusal.replace("(", r"\(")):
        apply_adaptation(model, AdaptConfig(method="lora", lora_targets=targets))
    assert not has_lora(model)


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_train_compile_and_deterministic_apply_to_every_training_command(
    base: Path, bytes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Fine-tuning accepted both and applied neither (only pretrain read them)."""
    from graft.train import loop

    seen: dict[str, bool] = {}

    def train(run: loop.Run, echo: object) -> loop.RunResult:
        seen["compiled"] = run.model.model._compiled_call_impl is not None
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        raise KeyboardInterrupt  # nothing more to see: no training

    monkeypatch.setattr(loop, "_train", train)
    knobs = ["--train.compile=true", "--train.deterministic=true", "--out", str(tmp_path / "r")]
    if command == "pretrain":
        args = ["pretrain", "--data", str(bytes_data), "--model.preset=nano", *TINY, *knobs]
    else:
        records = write_records(tmp_path / "train.jsonl")
        args = ["finetune", "classify", "--init", str(base), "--train", str(records), *knobs]
    assert main(args) == 130
    assert seen == {"compiled": True, "deterministic": True}
    assert not torch.are_deterministic_algorithms_enabled()  # for this run only


def test_eval_and_serve_read_texts_as_long_as_fine_tuning_did(base: Path, tmp_path: Path) -> None:
    """A fine-tune with train.seq_len below the model's context cut every text there, while eval
    and the server read up to the whole context: another input than the one trained on."""
    import graft.serve.encodings as encodings
    from graft.checkpoint import trained_context
    from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
    from graft.serve.http_errors import APIError
    from graft.serve.model_info import describe_model

    records = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    args = ["finetune", "classify", "--init", str(base), "--train", str(records)]
    assert main([*args, "--out", str(out), "--train.seq_len=8", "--train.max_steps=2"]) == 0
    checkpoint = out / "checkpoints" / "last"
    model, tokenizer = load_model(checkpoint)
    assert model.config.max_seq_len == 32 and trained_context(checkpoint) == 8
    assert trained_context(base) is None  # pre-trained on its whole context
    text = "good great fine nice"  # more than 8 tokens, fewer than 32
    assert 8 < len(tokenizer.encode(text)) < 32
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"text": text, "label": "pos"}) + "\n", encoding="utf-8")
    options = EvalOptions(checkpoint, "classify", (data,), out_dir=tmp_path / "eval")
    report = json.loads(evaluate_checkpoint(options).read_text(encoding="utf-8"))
    assert report["truncated"] == 1  # cut at 8, as fine-tuning cut it
    info = describe_model(model, tokenizer, checkpoint, name="m", created=0)
    assert info.input_context == 8
    with pytest.raises(APIError, match=r"reads at most 8 \(the context it was trained on\)"):
        encodings.input_ids(text, tokenizer, info)


def test_eval_lm_keeps_the_model_context_where_whole_texts_take_the_trained_one(
    tmp_path: Path,
) -> None:
    """lm's rolling windows are the model's context (as lm-evaluation-harness reads the export);
    classify, tokens and qa read a text as long as fine-tuning cut it."""
    from graft.checkpoint import save_checkpoint, trained_context
    from graft.data.tokenizer import bytes_tokenizer
    from graft.evaluate.evaluate import EvalOptions, _context
    from graft.model.config import preset
    from graft.model.transformer import LanguageModel

    model = LanguageModel(preset("nano", vocab_size=262, max_seq_len=32, d_model=32, n_layers=1))
    ckpt = save_checkpoint(
        tmp_path / "c",
        model=model,
        tokenizer=bytes_tokenizer(),
        run_config_yaml="train:\n  seq_len: 8\n",
    )
    assert trained_context(ckpt) == 8
    options = EvalOptions(ckpt, "lm", (tmp_path,))
    assert _context(model, options, texts=False) == 32 and _context(model, options) == 8


def test_a_classifier_fine_tuned_again_keeps_its_head_only_for_its_own_labels(
    base: Path, tmp_path: Path, capsys
) -> None:
    """Fine-tuning a classifier on records of other labels stopped with torch's raw size
    mismatch (or, with as many labels, went on from a head that answered in the old names)."""
    first = tmp_path / "first"
    records = write_records(tmp_path / "train.jsonl")
    steps = ["--train.max_steps=2", "--train.eval_every=2", "--train.progress=false"]
    args = ["finetune", "classify", "--train", str(records), *steps]
    assert main([*args, "--init", str(base), "--out", str(first)]) == 0
    classifier, _ = load_model(first / "checkpoints" / "last")
    trained_head = classifier.classifier.weight.detach().clone()

    # The same labels: the run goes on from the trained head.
    again = tmp_path / "again"
    init = ["--init", str(first / "checkpoints" / "last"), "--train.max_steps=1"]
    assert main([*args, *init, "--out", str(again), "--optim.lr=1e-9"]) == 0
    model, _ = load_model(again / "checkpoints" / "last")
    assert torch.allclose(model.classifier.weight, trained_head, atol=1e-6)

    # Three other labels: a new head, and a notice saying so.
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["label"] = ["a", "b", "c"][i % 3]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(row) + "\n" for row in rows))
    capsys.readouterr()
    out = tmp_path / "three"
    three = ["finetune", "classify", "--train", str(other), *steps, *init, "--out", str(out)]
    assert main(three) == 0
    assert "starts afresh" in capsys.readouterr().out
    model, _ = load_model(out / "checkpoints" / "last")
    assert model.config.labels == ("a", "b", "c") and model.classifier.weight.shape[0] == 3


def test_given_labels_and_tags_fix_the_heads_order(base: Path, tmp_path: Path) -> None:
    """objective.labels gives the label set in id order instead of reading it from the records
    (private training needs it: see tests/train/test_privacy.py)."""
    records = write_records(tmp_path / "train.jsonl")
    steps = ["--train.max_steps=1", "--train.eval_every=1", "--train.progress=false"]
    for task, data, labels in (
        ("classify", records, ["pos", "neg", "meh"]),
        ("tokens", write_conll(tmp_path / "train.txt"), ["O", "B-PER", "B-LOC", "I-LOC"]),
    ):
        out = tmp_path / task
        args = ["finetune", task, "--init", str(base), "--train", str(data), "--out", str(out)]
        assert main([*args, *steps, f"--objective.labels=[{', '.join(labels)}]"]) == 0
        model, _ = load_model(out / "checkpoints" / "last")
        assert model.config.labels == tuple(labels)
