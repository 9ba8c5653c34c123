"""The `graft` command with Hugging Face directories, in subprocesses: `generate` reads one as it
reads a checkpoint, and `export --format hf` writes one that transformers loads to the same
logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from graft.checkpoint import save_checkpoint
from graft.data.tokenizer import bytes_tokenizer
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel

pytestmark = [pytest.mark.parity, pytest.mark.e2e]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROMPT = "The quick"
EXPORT_FILES = [
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


def graft(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def test_generate_reads_a_hugging_face_directory(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    _perturb(hf_model, 1)
    hf_model.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf")

    result = graft(
        "generate", tmp_path / "hf", "--prompt", PROMPT, "--temperature", 0, "--max-new-tokens", 5
    )
    assert result.returncode == 0, result.stderr

    prompt_ids = tokenizer.encode(PROMPT)
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=5,
            min_new_tokens=5,
            eos_token_id=None,
            pad_token_id=0,
        )
    new = out[0, len(prompt_ids) :].tolist()
    if tokenizer.eot_id in new:
        new = new[: new.index(tokenizer.eot_id)]
    # splitlines: text-mode pipes turn a generated "\r" into "\n"
    assert result.stdout.splitlines() == (PROMPT + tokenizer.decode(new)).splitlines()


def test_generate_stops_at_the_generation_configs_eos_ids(tmp_path: Path) -> None:
    """An instruct model's folder names its end-of-turn token in generation_config.json (Llama 3's
    <|eot_id|>): transformers' generate and `graft serve` stop there; `graft generate` and
    `graft eval --task generate` ran on to the token limit."""
    tokenizer = bytes_tokenizer()
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=64, d_model=32, n_layers=2, n_heads=4
    )
    model = LanguageModel(config).eval()
    _perturb(model, 2)
    from graft.model.convert.hf_export import export_hf

    out = export_hf(model, tmp_path / "hf", tokenizer=tokenizer)
    args = ("generate", out, "--prompt", PROMPT, "--temperature", 0, "--max-new-tokens", 6)
    free = graft(*args)
    assert free.returncode == 0, free.stderr
    first = tokenizer.encode(free.stdout.rstrip("\n")[len(PROMPT) :])[0]
    generation = json.loads((out / "generation_config.json").read_text())
    generation["eos_token_id"] = [tokenizer.eot_id, first]
    (out / "generation_config.json").write_text(json.dumps(generation))
    stopped = graft(*args)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == PROMPT + "\n"
    # An export rewritten and cut between its two renames is read from its previous version, its
    # generation config included (it was "no such checkpoint directory").
    out.rename(out.with_name(f".{out.name}.old"))
    cut = graft(*args)
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == PROMPT + "\n"


def test_generate_refuses_a_tokenizer_larger_than_the_embeddings(tmp_path: Path) -> None:
    hf_model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    )
    hf_model.save_pretrained(tmp_path / "hf")
    bytes_tokenizer().save(tmp_path / "hf")
    result = graft("generate", tmp_path / "hf", "--max-new-tokens", 2)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"graft: error: {tmp_path / 'hf' / 'tokenizer.json'}: 262 tokens, "
        "but tensor model.embed_tokens.weight has only 100 rows; "
        "the tokenizer belongs to another model"
    ]


def _checkpoint(directory: Path, **fields: object) -> Path:
    tokenizer = bytes_tokenizer()
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
    _perturb(model, 2)
    return save_checkpoint(directory, model=model, tokenizer=tokenizer, run_config_yaml="{}\n")


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_export_hf_loads_in_transformers_with_the_same_logits(style: str, tmp_path: Path) -> None:
    fields = (
        {}
        if style == "gpt2"
        else dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, n_kv_heads=2)
    )
    checkpoint = _checkpoint(tmp_path / "ckpt", **fields)
    result = graft("export", checkpoint, "--format", "hf", "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"exported (hf): {tmp_path / 'hf'}"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == EXPORT_FILES

    from graft.checkpoint import load_model

    model, _ = load_model(checkpoint)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 262, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).logits, hf_model(input_ids=ids).logits, atol=1e-4, rtol=0
        )


def test_export_replaces_a_non_empty_directory_only_when_asked(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    refused = graft("export", checkpoint, "--out", tmp_path / "hf")  # --format hf is the default
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["notes.txt"]
    # --overwrite replaces an earlier export only: a folder of other things is never deleted
    # (it once took a run folder, or a folder of runs, with it).
    kept = graft("export", checkpoint, "--out", tmp_path / "hf", "--overwrite", "--no-verify")
    assert kept.returncode == 2 and "is not an earlier export" in kept.stderr
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["notes.txt"]
    for where in (tmp_path, checkpoint):  # a folder holding the model, or the model itself
        refused = graft("export", checkpoint, "--out", where, "--overwrite", "--no-verify")
        assert refused.returncode == 2 and "the model being exported" in refused.stderr
    (tmp_path / "hf" / "notes.txt").unlink()
    # What is replaced and what is left is the question here; verification has its own tests.
    for _ in range(2):  # into the empty folder, then over that export
        replaced = graft(
            "export", checkpoint, "--out", tmp_path / "hf", "--overwrite", "--no-verify"
        )
        assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == EXPORT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt",
        "hf",
    ]  # no temporary or aside copies left


def test_export_refuses_an_unrepresentable_config_and_writes_nothing(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt", positions="rope")  # rope + layernorm: no HF class
    result = graft("export", checkpoint, "--format", "hf", "--out", tmp_path / "hf")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "graft: error: cannot export to Hugging Face: positions=rope"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert json.loads((checkpoint / "config.json").read_text())["model"]["positions"] == "rope"


def test_export_verifies_by_default_and_prints_the_table(tmp_path: Path) -> None:
    checkpoint = _checkpoint(
        tmp_path / "ckpt", norm="rmsnorm", positions="rope", mlp="swiglu", bias=False
    )
    result = graft("export", checkpoint, "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported (hf): {tmp_path / 'hf'}"
    assert lines[1].split() == ["check", "result", "detail"]
    rows = [line.split("  ") for line in lines[2:]]
    assert [row[0] for row in rows] == [
        "transformers",
        "logits",
        "tokenizer ids",
        "eos ids",
        "chat template",
        "vocab size",
    ]
    assert all(" ok " in line for line in lines[2:] if not line.startswith("chat template")), (
        result.stdout
    )
    assert "not instruction-tuned" in next(
        line for line in lines if line.startswith("chat template")
    )
    assert "# ckpt" in (tmp_path / "hf" / "README.md").read_text()


def test_export_no_verify_skips_the_checks(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt")
    result = graft("export", checkpoint, "--out", tmp_path / "hf", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"exported (hf): {tmp_path / 'hf'}"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == EXPORT_FILES
