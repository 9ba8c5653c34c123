"""The files around a Hugging Face export (tokenizer_config, special_tokens_map, generation_config,
model card) and `verify_hf_export`: AutoTokenizer gives graft's ids, and a good export passes while
a wrong eos, a tokenizer larger than the embedding and a tampered weight each fail their check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from graft.checkpoint import TrainingState, save_checkpoint
from graft.data.inputs import model_inputs
from graft.data.shards import prepare_shards
from graft.data.tokenizer import (
    GRAFT_SPECIAL_TOKENS_MAP,
    Tokenizer,
    bytes_tokenizer,
    train_tokenizer,
)
from graft.errors import CheckpointError
from graft.model.config import ModelConfig, preset
from graft.model.convert import verify
from graft.model.convert.hf_export import export_hf
from graft.model.convert.verify import PROBE_TEXT, raise_on_failure, verify_hf_export
from graft.model.transformer import LanguageModel

pytestmark = pytest.mark.parity

_TEXT = (
    "The quick brown fox jumps over the lazy dog. Café naïve résumé déjà vu. "
    "日本語のテキストです。中文文本。한국어 텍스트. 😀🚀👍🏽 emoji! "
    "def f(x):\n    return {'k': x ** 2}  # code\n"
)
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer([_TEXT * 3 for _ in range(12)], "bpe", 400, min_frequency=2)  # ~8 KB


def _model(tokenizer: Tokenizer, **fields: object) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(
            vocab_size=tokenizer.vocab_size,
            max_seq_len=64,
            d_model=32,
            n_layers=2,
            n_heads=4,
            **fields,
        )
    )  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _failed(records: list[verify.CheckRecord]) -> set[str]:
    return {r.check for r in records if r.ok is False}


def test_export_writes_tokenizer_generation_and_card_files(bpe: Tokenizer, tmp_path: Path) -> None:
    (tmp_path / "text").mkdir()
    for i in range(4):
        (tmp_path / "text" / f"{i}.txt").write_text(_TEXT * (i + 2), encoding="utf-8")
    data = tmp_path / "data"
    index = prepare_shards([tmp_path / "text"], bpe, data, val_fraction=0.5, seed=0, progress=False)
    model = _model(bpe, **LLAMA)
    run = tmp_path / "run"
    ckpt = save_checkpoint(
        run / "checkpoints" / "last",
        model=model,
        tokenizer=bpe,
        run_config_yaml=f"data:\n  path: {data}\n",
        state=TrainingState(step=7, tokens_seen=1234, elapsed_s=3.0),
    )
    (run / "metrics.jsonl").write_text(
        '{"step": 0, "val/loss": 5.5, "val/ppl": 244.7}\n{"step": 5, "val/loss": 3.25}\n'
        '{"step": 6, "val/loss": 3.5, "val/ppl": 33.1}\n{"step": 7, "train/loss": 2.0}\n'
    )
    (run / "eval").mkdir()
    (run / "eval" / "lm.json").write_text('{"loss": 3.3, "ppl": 27.1, "tokens": 640}\n')
    (run / "explain").mkdir()  # what `graft explain` writes for a checkpoint of the run
    (run / "explain" / "index.html").write_text("<!doctype html><title>explain</title>\n")
    (run / "explain" / "attention_layer0.png").write_bytes(b"\x89PNG")

    out = export_hf(model, tmp_path / "hf", tokenizer=bpe, source=ckpt)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "explain",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
        "unk_token": "<|unk|>",
        "mask_token": "<|mask|>",
        "sep_token": "<|sep|>",
        "cls_token": "<|cls|>",
        "model_max_length": 64,
        "clean_up_tokenization_spaces": False,
    }
    assert (
        "chat_template" not in tok_config and "bos_token" not in tok_config
    )  # graft has neither yet
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special == {k: v for k, v in tok_config.items() if k.endswith("_token")}
    assert json.loads((out / "generation_config.json").read_text()) == {
        "eos_token_id": 0,
        "pad_token_id": 1,
    }
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (0, 1, None)

    card = (out / "README.md").read_text()
    assert "LlamaForCausalLM" in card and "# run (last)" in card
    assert f"`{data}`" in card and f"{index.splits['train'].tokens:,} tokens" in card
    assert "optimizer steps: 7" in card and "tokens seen: 1,234" in card
    # The untrained baseline, the best evaluation by train.monitor (val/loss, lower) and the last.
    assert "| | step | val/loss | val/ppl |" in card
    assert "| first | 0 | 5.5000 | 244.7000 |" in card
    assert "| best val/loss | 5 | 3.2500 |  |" in card
    assert "| last | 6 | 3.5000 | 33.1000 |" in card
    assert "`graft eval` (eval/lm.json):" in card and "| ppl | 27.1000 |" in card
    # The run's explain page travels with the export, and the card links it relatively.
    assert "[explain/index.html](explain/index.html)" in card
    assert sorted(p.name for p in (out / "explain").iterdir()) == [
        "attention_layer0.png",
        "index.html",
    ]
    assert f"graft pretrain --config {ckpt / 'run_config.yaml'}" in card
    assert "unknown" not in card


def test_model_card_says_unknown_for_what_the_files_do_not_say(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    model = _model(tokenizer)
    ckpt = save_checkpoint(
        tmp_path / "ckpt", model=model, tokenizer=tokenizer, run_config_yaml="{}\n"
    )
    card = (
        export_hf(model, tmp_path / "hf", tokenizer=tokenizer, source=ckpt) / "README.md"
    ).read_text()
    assert (
        "data: unknown" in card
        and "steps, tokens, time: unknown" in card
        and "final metrics: unknown" in card
    )
    bare = (export_hf(model, tmp_path / "bare") / "README.md").read_text()
    assert "exported without the source checkpoint" in bare and "no run_config.yaml" in bare
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_auto_tokenizer_gives_graft_ids(kind: str, bpe: Tokenizer, tmp_path: Path) -> None:
    tokenizer = bpe if kind == "bpe" else bytes_tokenizer()
    out = export_hf(_model(tokenizer), tmp_path / "hf", tokenizer=tokenizer)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    for text in (PROBE_TEXT, _TEXT, "<|endoftext|>x<|pad|>"):
        ids = auto(text)["input_ids"]
        assert ids == tokenizer.encode(text)
        assert auto.decode(ids) == text
    assert (auto.eos_token_id, auto.pad_token_id, auto.bos_token_id) == (
        tokenizer.eot_id,
        tokenizer.pad_id,
        None,
    )


def test_a_tokenizer_with_a_bos_token_exports_its_id(bpe: Tokenizer, tmp_path: Path) -> None:
    # An imported tokenizer may name a bos token; export once crashed on it (the id was passed
    # twice to the config update).
    roles = {**GRAFT_SPECIAL_TOKENS_MAP, "bos_token": "<|endoftext|>"}
    tokenizer = Tokenizer(bpe.backend, special_tokens_map=roles)
    out = export_hf(_model(tokenizer), tmp_path / "hf", tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] == tokenizer.bos_id == tokenizer.eot_id
    assert transformers.AutoTokenizer.from_pretrained(out).bos_token_id == tokenizer.bos_id


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_verify_passes_on_a_good_export(style: str, bpe: Tokenizer, tmp_path: Path) -> None:
    model = _model(bpe, **({} if style == "gpt2" else LLAMA))
    records = verify_hf_export(export_hf(model, tmp_path / "hf", tokenizer=bpe), model, bpe)
    assert [(r.check, r.ok) for r in records] == [
        ("transformers", True),
        ("logits", True),
        ("tokenizer ids", True),
        ("eos ids", True),
        ("chat template", None),
        ("vocab size", True),
    ]
    raise_on_failure(records, tmp_path / "hf")  # no error


def test_verify_catches_a_wrong_eos_in_generation_config(bpe: Tokenizer, tmp_path: Path) -> None:
    model = _model(bpe, **LLAMA)
    out = export_hf(model, tmp_path / "hf", tokenizer=bpe)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 3, "pad_token_id": 1}))
    records = verify_hf_export(out, model, bpe)
    assert _failed(records) == {"eos ids"}
    with pytest.raises(CheckpointError) as err:
        raise_on_failure(records, out)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        "export verification failed: eos ids (generation_config.json eos_token_id 3"
    )
    assert "written and complete" in message


def test_verify_catches_a_tokenizer_larger_than_the_embedding(
    bpe: Tokenizer, tmp_path: Path
) -> None:
    small = bytes_tokenizer()
    model = _model(small, **LLAMA)  # 262 rows
    out = export_hf(model, tmp_path / "hf", tokenizer=small)
    bigger = train_tokenizer([_TEXT * 3 for _ in range(12)], "bpe", 300)
    assert bigger.vocab_size > 262
    bigger.save(out)  # a tokenizer.json from another model
    assert "vocab size" in _failed(verify_hf_export(out, model, small))


def test_verify_catches_a_tampered_weight(bpe: Tokenizer, tmp_path: Path) -> None:
    model = _model(bpe, **LLAMA)
    out = export_hf(model, tmp_path / "hf", tokenizer=bpe)
    weights = load_file(str(out / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] += 0.5
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    records = verify_hf_export(out, model, bpe)
    assert _failed(records) == {"logits"}


def test_verify_without_transformers_uses_graft_readers(
    bpe: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "_transformers_available", lambda: False)
    model = _model(bpe)
    out = export_hf(model, tmp_path / "hf", tokenizer=bpe)
    records = verify_hf_export(out, model, bpe)
    assert [(r.check, r.ok) for r in records] == [
        ("transformers", None),
        ("logits", True),
        ("tokenizer ids", True),
        ("eos ids", True),
        ("chat template", None),
        ("vocab size", True),
    ]
    assert "graft's HF reader" in records[1].detail
    weights = load_file(str(out / "model.safetensors"))
    weights["transformer.wte.weight"][5, 0] += 0.5
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    assert _failed(verify_hf_export(out, model, bpe)) == {"logits"}


def test_an_encoder_export_frames_texts_as_graft_does(tmp_path: Path) -> None:
    """graft reads every text given to an encoder as [CLS] text [SEP]; a tokenizer graft trained has
    no post-processor, so its export must add that frame for transformers' tokenizer(text) to give
    the classifier graft's ids (and logits)."""
    tokenizer = train_tokenizer([_TEXT * 3 for _ in range(12)], "wordpiece", 200)
    assert tokenizer.backend.post_processor is None
    config = preset(
        "bert-nano",
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        head="sequence",
        labels=("neg", "pos"),
        mlm_head=False,
        nsp_head=False,
    )
    torch.manual_seed(0)
    model = LanguageModel(config).eval()
    with torch.no_grad():  # a fresh classifier's logits are all near zero
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    out = export_hf(model, tmp_path / "hf", tokenizer=tokenizer)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    text, other = "The quick brown fox jumps.", "Café naïve résumé."
    ids = model_inputs(tokenizer, [text], framed=config.is_encoder, max_len=64).ids[0]
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    assert ids[0] == cls and ids[-1] == sep  # graft does frame it
    encoded = auto(text, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == ids
    assert auto(text, other)["input_ids"] == [*ids, *tokenizer.encode(other), sep]
    with torch.no_grad():
        ours = model(torch.tensor([ids]), heads=("classifier",)).class_logits
        theirs = hf_model(**encoded).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    # A copy was framed: graft's tokenizer, and the export as graft reads it, encode unframed.
    assert tokenizer.backend.post_processor is None
    assert Tokenizer.load(out).encode(text) == tokenizer.encode(text)
    # ... and is the same tokenizer to graft: data prepared with the original trains from the
    # export (`pretrain --init EXPORT`), though the files differ.
    exported = Tokenizer.load(out)
    assert exported.sha256 != tokenizer.sha256
    assert exported.encoding_sha256 == tokenizer.encoding_sha256
    raise_on_failure(verify_hf_export(out, model, tokenizer), out)
    # verify compares the ids the model reads, frame included: an export without the frame
    # (as written before) fails it, where ids without special tokens would still agree.
    files = json.loads((out / "tokenizer.json").read_text())
    files["post_processor"] = None
    (out / "tokenizer.json").write_text(json.dumps(files))
    checks = {r.check: r for r in verify_hf_export(out, model, tokenizer)}
    assert checks["tokenizer ids"].ok is False, checks["tokenizer ids"]


def _chat_tokenizer(bpe: Tokenizer, template: str) -> Tokenizer:
    tokenizer = Tokenizer(type(bpe.backend).from_str(bpe.backend.to_str()))
    tokenizer.chat_template = template
    return tokenizer


def test_verify_checks_the_chat_template_and_catches_a_missing_one(
    bpe: Tokenizer, tmp_path: Path
) -> None:
    from graft.data.chat import DEFAULT_CHAT_TEMPLATE

    tokenizer = _chat_tokenizer(bpe, DEFAULT_CHAT_TEMPLATE)
    model = _model(tokenizer)
    export_hf(model, tmp_path / "out", tokenizer=tokenizer)
    records = {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}
    assert records["chat template"].ok, records["chat template"].detail
    config_path = tmp_path / "out" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    assert "chat template" in _failed(verify_hf_export(tmp_path / "out", model, tokenizer))


def test_verify_catches_a_template_that_never_ends_a_turn(bpe: Tokenizer, tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    tokenizer = _chat_tokenizer(bpe, template)
    model = _model(tokenizer)
    export_hf(model, tmp_path / "out", tokenizer=tokenizer)
    records = {r.check: r for r in verify_hf_export(tmp_path / "out", model, tokenizer)}
    assert (
        records["chat template"].ok is False
        and "never emits the eos token" in records["chat template"].detail
    )


def test_verify_catches_a_pre_tokenizer_mismatch(bpe: Tokenizer, tmp_path: Path) -> None:
    """A tokenizer.json whose pre-tokenizer changed (here: a prefix space added) encodes
    differently."""
    model = _model(bpe)
    export_hf(model, tmp_path / "out", tokenizer=bpe)
    path = tmp_path / "out" / "tokenizer.json"
    data = json.loads(path.read_text())
    assert (
        data["pre_tokenizer"]["type"] == "ByteLevel"
        and data["pre_tokenizer"]["add_prefix_space"] is False
    )
    data["pre_tokenizer"]["add_prefix_space"] = True
    path.write_text(json.dumps(data))
    record = {r.check: r for r in verify_hf_export(tmp_path / "out", model, bpe)}["tokenizer ids"]
    assert record.ok is False and "first difference at position 0" in record.detail, record.detail


def test_model_card_names_a_damaged_metrics_line(tmp_path: Path) -> None:
    from graft.model.convert.model_card import _metric_facts

    last = tmp_path / "run" / "checkpoints" / "last"
    last.mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "val/loss": 5.5}\n{oops\n')
    (line,) = _metric_facts(last)
    assert line.startswith("- final metrics: unknown (") and "metrics.jsonl:2: not a JSON" in line
