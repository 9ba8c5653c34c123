"""Damaged files: every file of a checkpoint (with its training state) and of a prepared-data
directory, truncated, with a flipped bit, with a field of the wrong type, and replaced by another
run's file of the same name; each with its manifest left as it was (manifest.json for a
checkpoint, the sizes and tokenizer hash in index.json for prepared data) and with one a tool
re-hashed to match the damage, so that only the loaders themselves stand between the damage and
the user. Each damaged copy is then used as a user would: `graft generate` on a checkpoint,
`graft pretrain --resume` on a run and on its data. Each must end in one line from graft that
names the damaged file (exit 2), or load cleanly where the damage is harmless, for the reason
`harmless` gives; never in a traceback.

The bit flip is the top bit of the middle byte: in a text file that is invalid UTF-8; in tensor
data it is another number, as a flip elsewhere in a text file can be other valid text, which
only a manifest can tell.

A resume here continues a run that reached train.max_steps: it does all that a resume does
before its first step (resolve, open and check the data, verify the checkpoint, load the
weights, the optimizer moments, the training state and the generators) and then stops, which
keeps a case at a few tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from graft.checkpoint import read_saved_section
from graft.cli import EXIT_BAD_INPUT, main
from graft.config import AdaptConfig
from graft.data.shards import prepare_shards
from graft.data.tokenizer import Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import CheckpointError

CHECKPOINT_FILES = (
    "config.json",
    "manifest.json",
    "model.safetensors",
    "run_config.yaml",
    "tokenizer.json",
    "training_state/optimizer.pt",
    "training_state/rng.safetensors",
    "training_state/state.json",
)
DATA_FILES = ("index.json", "train.bin", "val.bin", "tokenizer.json")
DAMAGES = ("truncated", "bit flip", "type change", "foreign")
# What a tool that re-hashes leaves: the manifest agrees with the damaged files. The manifests
# themselves (manifest.json, index.json) are only damaged as they are.
MANIFESTS = ("as is", "re-hashed")
LAST = Path("run") / "checkpoints" / "last"

# The field given the wrong type (its value wrapped in a list) in each structured file.
TYPE_CHANGES: dict[str, tuple[str | int, ...]] = {
    "config.json": ("model", "n_layers"),
    "manifest.json": ("files", "model.safetensors", "bytes"),
    "tokenizer.json": ("added_tokens", 0, "id"),
    "state.json": ("step",),
    "run_config.yaml": ("train", "batch_size"),
    "index.json": ("vocab_size",),
}


@dataclass(frozen=True)
class Made:
    """The originals (a run with its data) and another run's files to replace them with."""

    root: Path
    foreign: Path


def _pretrain_args(root: Path, d_model: int, batch_size: int) -> list[str]:
    return [
        "pretrain",
        f"--data={root / 'data'}",
        f"--out={root / 'run'}",
        "--model.preset=nano",
        "--model.max_seq_len=16",
        f"--model.d_model={d_model}",
        "--model.n_layers=1",
        "--model.n_heads=2",
        f"--train.batch_size={batch_size}",
        "--train.max_steps=2",
        "--train.eval_every=2",
        "--train.eval_batches=1",
        "--train.progress=false",
    ]


def _build(root: Path, tokenizer: Tokenizer, d_model: int, batch_size: int) -> None:
    prepare_shards([root / "docs"], tokenizer, root / "data", progress=False)
    assert main(_pretrain_args(root, d_model, batch_size)) == 0


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, make_corpus: Callable[..., Path]) -> Made:
    """A two-step run over byte-tokenized data, and a foreign one: a BPE tokenizer with more
    tokens than the first model has embedding rows, a wider model, another batch size."""
    root, foreign = tmp_path_factory.mktemp("original"), tmp_path_factory.mktemp("foreign")
    for base, seed in ((root, 0), (foreign, 1)):
        make_corpus(base / "docs", documents=6, words=60, seed=seed)
    _build(root, bytes_tokenizer(), d_model=16, batch_size=2)
    texts = [p.read_text(encoding="utf-8") for p in sorted((foreign / "docs").iterdir())]
    _build(foreign, train_tokenizer(iter(texts), kind="bpe", vocab_size=300), 24, batch_size=3)
    return Made(root, foreign)


# -- damage --------------------------------------------------------------------------------


def _wrapped(value: Any, keys: tuple[str | int, ...]) -> None:
    """Wrap the value at `keys` in a list: a field of the wrong type."""
    for key in keys[:-1]:
        value = value[key]
    value[keys[-1]] = [value[keys[-1]]]


def _change_type(path: Path) -> None:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        _wrapped(data, TYPE_CHANGES[path.name])
        path.write_text(json.dumps(data), encoding="utf-8")
    elif path.suffix == ".yaml":
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        _wrapped(data, TYPE_CHANGES[path.name])
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
    elif path.suffix == ".safetensors":  # every tensor stored as another dtype
        tensors = load_file(str(path))
        save_file({name: t.to(torch.int32) for name, t in tensors.items()}, str(path))
    elif path.suffix == ".pt":
        saved = torch.load(path, weights_only=True)
        saved["state"] = [saved["state"]]
        torch.save(saved, path)
    else:  # token ids written as float32 instead of the recorded uint16
        np.fromfile(path, dtype=np.uint16).astype(np.float32).tofile(path)


def damage(path: Path, how: str, foreign: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit flip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x80
        path.write_bytes(bytes(flipped))
    elif how == "type change":
        _change_type(path)
    else:
        shutil.copyfile(foreign, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash_checkpoint(directory: Path) -> None:
    """manifest.json rewritten to match the files as they now are."""
    files = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (directory / "manifest.json").write_text(json.dumps({"files": files}), encoding="utf-8")


def rehash_data(directory: Path) -> None:
    """index.json's token counts and tokenizer hash rewritten to match the files."""
    index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    for split in index["splits"].values():
        split["tokens"] = (directory / split["file"]).stat().st_size // 2  # uint16
    try:
        index["tokenizer_sha256"] = Tokenizer.load(directory).sha256
    except Exception:  # noqa: BLE001 - a tokenizer no tool can read has no hash to record
        pass
    (directory / "index.json").write_text(json.dumps(index), encoding="utf-8")


# -- what the user sees --------------------------------------------------------------------


def harmless(path: Path, how: str, rehashed: bool, command: str) -> str | None:
    """Why a damaged copy may load cleanly; None where it must be refused."""
    file = path.name
    if file.endswith(".bin") and how == "bit flip" and _ids_fit(path):
        # The same with index.json as it is: it records sizes, and a flip keeps the size.
        return "a flipped bit that keeps a token id in the vocabulary is another token"
    if not rehashed:
        return None  # the manifest catches every change to the files it lists
    if command == "generate" and ("training_state" in path.parts or file == "run_config.yaml"):
        return "generate reads the model and its tokenizer only"
    if how == "bit flip" and file in ("model.safetensors", "rng.safetensors", "optimizer.pt"):
        # The middle of each is tensor data; a text file's flipped top bit is invalid UTF-8.
        return "a flipped bit in a tensor is another number, which only the manifest can tell"
    if how == "foreign" and file in ("state.json", "rng.safetensors"):
        return "another run's counters and generators are a valid state"
    if how == "truncated" and file.endswith(".bin") and path.stat().st_size % 2 == 0:
        # Cut between two uint16 ids, with index.json re-counted: a shorter split, as valid as
        # any (one cut inside an id leaves a size no count of tokens has, which is refused).
        return "a shard cut between tokens, its index re-counted, is a shorter split"
    return None


def _ids_fit(shard: Path) -> bool:
    vocab = json.loads((shard.parent / "index.json").read_text(encoding="utf-8"))["vocab_size"]
    return int(np.fromfile(shard, dtype=np.uint16).max()) < vocab


def run_command(
    argv: list[str],
    damaged: Path,
    root: Path,
    capsys: pytest.CaptureFixture[str],
    tally: Callable[[str, str, int], None],
    why_harmless: str | None,
) -> None:
    capsys.readouterr()
    tally("corruption:", "cases", 1)
    try:
        code = main(argv)
    except Exception as err:  # noqa: BLE001 - what this suite hunts: anything but one line
        tally("corruption:", "tracebacks", 1)
        pytest.fail(f"{argv[0]} with {damaged} damaged: {type(err).__name__}: {err}")
    err_text = capsys.readouterr().err
    if code == 0:
        assert why_harmless is not None, f"{argv[0]} loaded {damaged} damaged without a word"
        tally("corruption:", "harmless, loaded", 1)
        return
    assert code == EXIT_BAD_INPUT, err_text
    message = err_text.split("graft: error: ", 1)[1]
    assert message.endswith("\n") and "\n" not in message[:-1], message
    assert str(damaged) in message or (damaged.name in message and str(root) in message), message
    tally("corruption:", "one clear line", 1)


CHECKPOINT_CASES = [
    (file, how, manifest)
    for file in CHECKPOINT_FILES
    for how in DAMAGES
    for manifest in MANIFESTS
    if file != "manifest.json" or manifest == "as is"
]
DATA_CASES = [
    (file, how, manifest)
    for file in DATA_FILES
    for how in DAMAGES
    for manifest in MANIFESTS
    if file != "index.json" or manifest == "as is"
]


def _copy(made: Made, tmp_path: Path) -> Path:
    shutil.copytree(made.root / "data", tmp_path / "data")
    shutil.copytree(
        made.root / "run", tmp_path / "run", ignore=shutil.ignore_patterns("best", "*.png")
    )
    return tmp_path


@pytest.mark.parametrize(("file", "how", "manifest"), CHECKPOINT_CASES)
def test_a_damaged_checkpoint_is_one_line_or_harmless(
    file: str,
    how: str,
    manifest: str,
    made: Made,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tally: Callable[[str, str, int], None],
) -> None:
    root = _copy(made, tmp_path)
    checkpoint = root / LAST
    damage(checkpoint / file, how, made.foreign / LAST / file)
    rehashed = manifest == "re-hashed"
    if rehashed:
        rehash_checkpoint(checkpoint)
    tally("corruption:", "tracebacks", 0)
    generate = ["generate", str(checkpoint), "--prompt", "the", "--max-new-tokens", "2"]
    run_command(
        generate,
        checkpoint / file,
        checkpoint,
        capsys,
        tally,
        harmless(checkpoint / file, how, rehashed, "generate"),
    )
    resume = [*_pretrain_args(root, d_model=16, batch_size=2), "--resume"]
    run_command(
        resume,
        checkpoint / file,
        checkpoint,
        capsys,
        tally,
        harmless(checkpoint / file, how, rehashed, "resume"),
    )


@pytest.mark.parametrize(("file", "how", "manifest"), DATA_CASES)
def test_damaged_prepared_data_is_one_line_or_harmless(
    file: str,
    how: str,
    manifest: str,
    made: Made,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tally: Callable[[str, str, int], None],
) -> None:
    root = _copy(made, tmp_path)
    data = root / "data"
    damage(data / file, how, made.foreign / "data" / file)
    rehashed = manifest == "re-hashed"
    if rehashed:
        rehash_data(data)
    tally("corruption:", "tracebacks", 0)
    resume = [*_pretrain_args(root, d_model=16, batch_size=2), "--resume"]
    run_command(
        resume, data / file, data, capsys, tally, harmless(data / file, how, rehashed, "train")
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"train: {}\n", "no adapt section; the file is damaged"),
        (b"adapt:\n  method: [lora]\n", "not a valid run config (adapt.method: "),
        (b"adapt: {method: lo\x80ra}\n", "unreadable ('utf-8' codec can't decode byte 0x80"),
        (b"adapt: [\n", "unreadable (while parsing a flow node"),
    ],
)
def test_a_fine_tune_resume_reads_its_saved_adapt_section_in_one_line(
    text: bytes, problem: str, tmp_path: Path
) -> None:
    """What `graft finetune --resume` compares the run with: a damaged run_config.yaml that the
    manifest vouches for is one line naming it."""
    (tmp_path / "run_config.yaml").write_bytes(text)
    with pytest.raises(CheckpointError) as refused:
        read_saved_section(tmp_path, "adapt", AdaptConfig)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'run_config.yaml'}: {problem}"), message
    assert "\n" not in message
