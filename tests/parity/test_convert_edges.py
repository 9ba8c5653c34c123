"""The edges of `graft export` and of reading Hugging Face directories: where an export may be
written (one rule for both formats), flags that do not apply refused rather than ignored, an
imported BERT exported back with its eos named consistently (none, as transformers' BERT), and a
broken config.json blamed on config.json. The command runs in this process (`graft.cli.main`):
each refusal ends before any real work, so a subprocess would only add seconds."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import transformers

from graft.checkpoint import save_checkpoint
from graft.cli import main
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.errors import OutputError
from graft.model.config import ModelConfig
from graft.model.convert.gguf import export_gguf
from graft.model.convert.hf import is_hf_directory
from graft.model.convert.hf_export import export_hf
from graft.model.convert.verify import verify_hf_export
from graft.model.transformer import LanguageModel

pytestmark = pytest.mark.parity

LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False)
# Enough of a WordPiece vocabulary for the verify probe text to tokenize (mostly to [UNK]).
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,!?"]
BERT_VOCAB += ["the", "quick", "##s", "##ed"]


def graft(*args: object) -> tuple[int, str, str]:
    """`graft ARGS` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def one_error(stderr: str) -> str:
    """The message of a one-line `graft: error:` refusal."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error: "), stderr
    return lines[0].removeprefix("graft: error: ")


def _llama(vocab_size: int) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size, max_seq_len=32, d_model=32, n_layers=1, n_heads=2, **LLAMA
    )  # type: ignore[arg-type]
    return LanguageModel(config).eval()


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style checkpoint both formats export. Read-only."""
    tokenizer = bytes_tokenizer()
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "ckpt",
        model=_llama(tokenizer.vocab_size),
        tokenizer=tokenizer,
        run_config_yaml="model: {}\n",
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BertForMaskedLM with a WordPiece vocab.txt, saved by transformers as a MiniLM
    or bert-base directory is: no eos anywhere. Read-only."""
    directory = tmp_path_factory.mktemp("bert") / "bert"
    directory.mkdir()
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in BERT_VOCAB), encoding="utf-8")
    # transformers 5 keeps the pure-Python BERT as BertTokenizerLegacy; in 4 it is BertTokenizer.
    slow = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    slow(vocab_file=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    transformers.BertForMaskedLM(config).save_pretrained(directory)
    return directory


# ---------------------------------------------------------------- where an export goes


def test_gguf_export_refuses_an_existing_file_without_overwrite(
    llama_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    code, _, err = graft("export", llama_checkpoint, "--format", "gguf", "--out", out)
    assert code == 2
    assert one_error(err) == f"{out}: already exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"mine"
    code, _, err = graft(
        "export", llama_checkpoint, "--format", "gguf", "--out", out, "--overwrite"
    )
    assert code == 2 and "is not a GGUF file, so --overwrite will not replace it" in err
    out.write_bytes(b"GGUF, an earlier export")
    code, stdout, err = graft(
        "export", llama_checkpoint, "--format", "gguf", "--out", out, "--overwrite", "--no-verify"
    )
    assert code == 0, err
    assert stdout.strip() == f"exported (gguf, f16): {out}"
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary left


def test_gguf_export_refuses_a_folder_even_with_overwrite(
    llama_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "x").touch()
    for extra in ([], ["--overwrite"]):
        code, _, err = graft("export", llama_checkpoint, "--format", "gguf", "--out", out, *extra)
        assert code == 2
        assert one_error(err) == (
            f"{out}: is a folder, not a file; give the path of the file to write as --out"
        )
    assert [p.name for p in out.iterdir()] == ["x"]
    # In Python, where overwrite defaults on (a file written atomically), a folder is still refused.
    tokenizer = bytes_tokenizer()
    with pytest.raises(OutputError, match="is a folder"):
        export_gguf(_llama(tokenizer.vocab_size), tokenizer, out)


def test_hf_export_refuses_a_file_even_with_overwrite(
    llama_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "afile"
    out.write_text("mine")
    for extra in ([], ["--overwrite"]):
        code, _, err = graft("export", llama_checkpoint, "--format", "hf", "--out", out, *extra)
        assert code == 2
        assert (
            one_error(err) == f"{out}: is a file, not a folder; remove it or choose another --out"
        )
    assert out.read_text() == "mine"


def test_hf_export_names_the_overwrite_flag(llama_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = graft("export", llama_checkpoint, "--out", out)
    assert code == 2
    assert (
        one_error(err) == f"{out}: already exists and is not empty; pass --overwrite to replace it"
    )


# ---------------------------------------------------------------- flags that do not apply


def test_dtype_is_refused_for_an_hf_export(llama_checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = graft(
        "export", llama_checkpoint, "--format", "hf", "--out", tmp_path / "hf", "--dtype", "q8_0"
    )
    assert code == 2
    assert one_error(err).startswith("--dtype q8_0 sets the tensor type of a --format gguf file")
    assert list(tmp_path.iterdir()) == []


def test_merge_lora_is_refused_without_an_adapter(llama_checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = graft(
        "export", llama_checkpoint, "--out", tmp_path / "hf", "--merge-lora", "--no-verify"
    )
    assert code == 2
    assert one_error(err) == (
        f"{llama_checkpoint}: holds no LoRA adapter, so --merge-lora has nothing to merge (drop it)"
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- eos of an imported BERT


def test_an_imported_bert_exports_and_verifies_without_an_eos(
    bert_dir: Path, tmp_path: Path
) -> None:
    """transformers' BERT files name no eos (config.json eos_token_id null, no eos_token); graft
    ends BERT documents with [SEP] but an encoder generates nothing, so its export names none
    either, in every file, and its own verification agrees."""
    out = tmp_path / "exp"
    code, stdout, err = graft("export", bert_dir, "--format", "hf", "--out", out)
    assert code == 0, err
    eos_row = next(line for line in stdout.splitlines() if line.startswith("eos ids"))
    assert eos_row.split()[2] == "ok", stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (None, 0)
    assert "eos_token_id" not in json.loads((out / "generation_config.json").read_text())
    assert "eos_token" not in json.loads((out / "tokenizer_config.json").read_text())
    assert "eos_token" not in json.loads((out / "special_tokens_map.json").read_text())
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token is None


def test_a_decoder_over_a_bert_vocabulary_names_sep_as_eos_everywhere(
    bert_dir: Path, tmp_path: Path
) -> None:
    """A decoder generates up to graft's end of text, [SEP] for a BERT vocabulary: the export
    stops there too, and tokenizer_config.json says so as config.json does."""
    tokenizer = Tokenizer.load(bert_dir)
    model = _llama(tokenizer.vocab_size)
    out = export_hf(model, tmp_path / "exp", tokenizer=tokenizer)
    sep = tokenizer.token_to_id("[SEP]")
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == sep
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == sep
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "[SEP]"
    eos = next(r for r in verify_hf_export(out, model, tokenizer) if r.check == "eos ids")
    assert eos.ok is True, eos.detail


# ---------------------------------------------------------------- a broken config.json


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "unreadable JSON (Expecting property name"),
        ("[1]", "holds a JSON array, not an object"),
        ('{"vocab_size": 3}', "has no model_type"),
    ],
    ids=["broken-json", "not-an-object", "no-model-type"],
)
def test_a_broken_config_json_is_named_not_the_manifest(
    text: str, problem: str, tmp_path: Path
) -> None:
    directory = tmp_path / "hf"
    bytes_tokenizer().save(directory)
    (directory / "config.json").write_text(text)
    assert is_hf_directory(directory)
    code, _, err = graft("generate", directory, "--prompt", "hi")
    assert code == 2
    assert one_error(err).startswith(f"{directory / 'config.json'}: {problem}")


def test_a_folder_whose_config_and_tokenizer_are_both_broken_names_the_config(
    tmp_path: Path,
) -> None:
    """config.json says what the folder is, so it is read (and blamed) first."""
    directory = tmp_path / "hf"
    bytes_tokenizer().save(directory)
    (directory / "config.json").write_text('{"vocab_size": 3}')
    (directory / "tokenizer.json").write_text("{")
    code, _, err = graft("generate", directory, "--prompt", "hi")
    assert code == 2
    assert one_error(err).startswith(f"{directory / 'config.json'}: has no model_type")


def test_a_graft_checkpoint_without_its_manifest_still_says_so(
    llama_checkpoint: Path, tmp_path: Path
) -> None:
    """Only a directory without graft's own files is taken for a Hugging Face one."""
    import shutil

    damaged = Path(shutil.copytree(llama_checkpoint, tmp_path / "ckpt"))
    (damaged / "manifest.json").unlink()
    assert not is_hf_directory(damaged)
    (damaged / "config.json").write_text("{")
    assert not is_hf_directory(damaged)  # run_config.yaml is graft's too
    code, _, err = graft("generate", damaged, "--prompt", "hi")
    assert code == 2
    assert one_error(err) == f"{damaged / 'manifest.json'}: missing or unreadable; " + (
        "the checkpoint is incomplete"
    )
