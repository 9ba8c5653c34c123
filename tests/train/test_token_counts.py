"""Tokens seen are real tokens: a fine-tune on short padded texts counts the tokens it drew, not
batch x accum x seq_len, and every use of the count agrees: the logged `tokens`, tokens/s,
train.max_tokens and the token-based learning-rate decay. Resume stays exact, and checkpoints
written before the warm-up boundary was recorded still resume as they did.

The expected counts are taken from the drawn batches' input ids (positions that are not the pad
token), not from the Batch property the loop uses.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from graft.checkpoint import MANIFEST_FILE, STATE_DIR, save_checkpoint
from graft.config import OptimConfig, validate_run_config
from graft.data.shards import prepare_shards
from graft.data.tokenizer import bytes_tokenizer
from graft.model.transformer import LanguageModel
from graft.objectives.classify import Classify
from graft.objectives.clm import CausalLM
from graft.objectives.nsp import NextSentence
from graft.train import loop
from graft.train.finetune import finetune
from graft.train.metrics_log import read_metrics
from graft.train.optim import learning_rate
from graft.train.pretrain import pretrain

PAD = bytes_tokenizer().pad_id
SEQ = 64
BATCH, ACCUM = 4, 2
WORDS = "ab cde f ghij kl mnopq rs t uvw xyz".split()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny decoder saved as a checkpoint: the fine-tunes start from it."""
    tokenizer = bytes_tokenizer()
    config = validate_run_config(
        {
            "model": {
                "preset": "nano",
                "vocab_size": tokenizer.vocab_size,
                "max_seq_len": SEQ,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
            },
            "train": {"max_steps": 1},
        }
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("token_counts") / "base"
    save_checkpoint(
        out,
        model=LanguageModel(config.model),
        tokenizer=tokenizer,
        run_config_yaml=config.to_yaml(),
    )
    return out


@pytest.fixture(scope="module")
def short_texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled texts of 1 to 10 short words: a few tokens each, against a context of 64."""
    path = tmp_path_factory.mktemp("short_texts") / "train.jsonl"
    rows = [
        {"text": " ".join(WORDS[: 1 + i % len(WORDS)]), "label": "ab"[i % 2]} for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def finetune_short_texts(
    base: Path, records: Path, out: Path, monkeypatch: pytest.MonkeyPatch, **train: object
) -> tuple[loop.RunResult, list[int], list[dict]]:
    """Fine-tune a classifier on the short texts. Returns the result, the real tokens of each
    optimizer step (counted from the drawn batches' input ids) and the training log records.

    The loop's clock is faked: one second passes per micro-batch drawn, so tokens/s over a window
    is exactly the window's counted tokens / its micro-batches."""
    drawn: list[int] = []
    clock = [0.0]
    draw = Classify.train_batch

    def recording(self: Classify, batch_size: int, generator: torch.Generator):
        batch = draw(self, batch_size, generator)
        drawn.append(int((batch.input_ids != PAD).sum()))
        clock[0] += 1.0
        return batch

    monkeypatch.setattr(Classify, "train_batch", recording)
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    config = validate_run_config(
        {
            "objective": {"name": "classify"},
            "data": {"train_file": str(records)},
            "optim": {"lr": 1e-3, "warmup_steps": 2, "min_lr_ratio": 0.1},
            "train": {
                "init": str(base),
                "out_dir": str(out),
                "batch_size": BATCH,
                "grad_accum": ACCUM,
                "log_every": 1,
                "eval_every": 1000,
                "eval_batches": 1,
                "progress": False,
                **train,
            },
        }
    )
    result = finetune(config, echo=lambda _: None)
    assert len(drawn) == ACCUM * result.step
    per_step = [sum(drawn[i : i + ACCUM]) for i in range(0, len(drawn), ACCUM)]
    logged = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    return result, per_step, logged


def test_a_finetune_on_short_texts_counts_and_logs_its_real_tokens(
    base: Path, short_texts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, per_step, logged = finetune_short_texts(
        base, short_texts, tmp_path / "run", monkeypatch, max_steps=6
    )
    seen = list(itertools.accumulate(per_step))
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert [r["tokens"] for r in logged] == seen
    assert result.tokens_seen == seen[-1]
    # tokens/s counts the same tokens: each window is one step of ACCUM fake seconds.
    assert [r["tokens_per_s"] for r in logged] == pytest.approx([n / ACCUM for n in per_step])
    # FLOP/s and MFU follow from the same real tokens: a fixed number of FLOPs per token.
    per_token = {round(r["flop_s"] / r["tokens_per_s"]) for r in logged}
    assert len(per_token) == 1 and all(0 < r["mfu"] for r in logged)
    # The final evaluation logs the same total.
    final = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert "val/loss" in final and final["tokens"] == seen[-1]
    # Short texts: far below the nominal batch x accum x seq_len, which the loop once counted.
    assert seen[-1] < 6 * BATCH * ACCUM * SEQ // 2


def test_max_tokens_stops_and_the_schedule_decays_by_real_tokens(
    base: Path, short_texts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit, warmup = 600, 2
    result, per_step, logged = finetune_short_texts(
        base, short_texts, tmp_path / "run", monkeypatch, max_tokens=limit
    )
    seen = list(itertools.accumulate(per_step))
    # The first step at which the real count reaches the limit (the nominal count of 512 a step
    # would have stopped at step 2).
    assert result.stop_reason == "max_tokens"
    assert seen[-2] < limit <= seen[-1] and result.tokens_seen == seen[-1]
    assert result.step > 2
    # Warm-up by steps, then decay by the real tokens seen since warm-up ended.
    optim = OptimConfig(lr=1e-3, warmup_steps=warmup, min_lr_ratio=0.1)
    at_warmup_end = seen[warmup - 1]
    before = [0, *seen[:-1]]  # tokens seen when each step's learning rate was chosen
    expected = [
        learning_rate(step, (before[step] - at_warmup_end) / (limit - at_warmup_end), optim)
        for step in range(result.step)
    ]
    assert [r["lr"] for r in logged] == pytest.approx(expected, abs=1e-6)  # logged to 6 places
    # The boundary is kept for an exact resume.
    state = json.loads(
        (tmp_path / "run" / "checkpoints" / "last" / STATE_DIR / "state.json").read_text()
    )
    assert state["warmup_tokens"] == at_warmup_end and state["tokens_seen"] == seen[-1]


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory: pytest.TempPathFactory, make_corpus) -> Path:
    """Documents shorter than the context: NSP pairs are padded, by different amounts."""
    root = tmp_path_factory.mktemp("short_documents")
    make_corpus(root / "docs", documents=30, words=5)
    prepare_shards([root / "docs"], bytes_tokenizer(), root / "data", progress=False)
    return root / "data"


def pretrain_config(data: Path, out: Path, objective: str, **train: object):
    encoder = objective == "nsp"
    return validate_run_config(
        {
            "model": {
                "preset": "bert-nano" if encoder else "nano",
                # NSP pairs of the short documents leave part of a 64-token row empty
                "max_seq_len": 64 if encoder else 32,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "dropout": 0.1,  # the restored RNG state matters too
            },
            "data": {"path": str(data)},
            "objective": {"name": objective},
            "optim": {"lr": 3e-3, "warmup_steps": 3},
            "train": {
                "out_dir": str(out),
                "batch_size": 4,
                "eval_every": 5,
                "eval_batches": 1,
                "log_every": 1,
                "progress": False,
                "deterministic": True,
                **train,
            },
        }
    )


@pytest.fixture
def one_thread():
    """Bitwise comparisons on one CPU thread: a math library that picks its thread count by the
    machine's load (MKL does) may sum in another order from one run to the next."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def interrupt_after(objective: type, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while drawing the batch of step steps + 1 (one micro-batch a step)."""
    draw = objective.train_batch
    calls = {"n": 0}

    def interrupting(self, batch_size, generator):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt
        return draw(self, batch_size, generator)

    monkeypatch.setattr(objective, "train_batch", interrupting)


def same_run(a: Path, b: Path) -> None:
    wa = load_file(str(a / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name

    def lrs(run: Path) -> list[tuple[int, float, int]]:
        return [
            (r["step"], r["lr"], r["tokens"])
            for r in read_metrics(run / "metrics.jsonl")
            if "train/loss" in r
        ]

    assert lrs(a) == lrs(b)


@pytest.mark.usefixtures("one_thread")
def test_a_token_limited_run_with_padded_rows_resumes_exactly(
    short_documents: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NSP pairs of short documents are padded: real tokens vary from step to step, and the
    warm-up boundary recorded in the checkpoint keeps the resumed decay where it was."""
    straight = pretrain(
        pretrain_config(short_documents, tmp_path / "straight", "nsp", max_tokens=2200)
    )
    assert straight.stop_reason == "max_tokens"
    assert straight.tokens_seen < straight.step * 4 * 64  # padded: less than the nominal count

    interrupt_after(NextSentence, 5, monkeypatch)
    first = pretrain(pretrain_config(short_documents, tmp_path / "split", "nsp", max_tokens=2200))
    assert first.stop_reason == "interrupted" and first.step == 5
    monkeypatch.undo()
    state = json.loads(
        (tmp_path / "split" / "checkpoints" / "last" / STATE_DIR / "state.json").read_text()
    )
    per_step = [
        r["tokens"]
        for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")
        if "train/loss" in r
    ]
    assert state["warmup_tokens"] == per_step[2]  # the tokens seen after the 3 warm-up steps

    resumed = pretrain(
        pretrain_config(short_documents, tmp_path / "split", "nsp", max_tokens=2200), resume=True
    )
    assert (resumed.step, resumed.tokens_seen) == (straight.step, straight.tokens_seen)
    same_run(tmp_path / "straight", tmp_path / "split")


@pytest.mark.usefixtures("one_thread")
def test_a_checkpoint_without_the_warmup_boundary_resumes_as_before(
    bytes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written before `warmup_tokens` existed loads; past warm-up, the boundary is
    taken from its own counts (fixed per step then), so the decay continues unchanged. Packed
    pre-training windows count batch x seq_len tokens a step, as they always did."""
    config = pretrain_config(bytes_data, tmp_path / "straight", "clm", max_tokens=1536)
    straight = pretrain(config)
    assert (straight.stop_reason, straight.step, straight.tokens_seen) == ("max_tokens", 12, 1536)

    interrupt_after(CausalLM, 5, monkeypatch)
    split = tmp_path / "split"
    pretrain(pretrain_config(bytes_data, split, "clm", max_tokens=1536))
    monkeypatch.undo()
    state_file = split / "checkpoints" / "last" / STATE_DIR / "state.json"
    state = json.loads(state_file.read_text())
    assert state.pop("warmup_tokens") == 3 * 4 * 32
    state_file.write_text(json.dumps(state))  # as an older graft wrote it
    _rehash(split / "checkpoints" / "last" / MANIFEST_FILE, state_file)  # it hashes state.json

    resumed = pretrain(pretrain_config(bytes_data, split, "clm", max_tokens=1536), resume=True)
    assert (resumed.step, resumed.tokens_seen) == (12, 1536)
    same_run(tmp_path / "straight", split)


def _rehash(manifest_file: Path, changed: Path) -> None:
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][changed.relative_to(manifest_file.parent).as_posix()] = {
        "bytes": changed.stat().st_size,
        "sha256": hashlib.sha256(changed.read_bytes()).hexdigest(),
    }
    manifest_file.write_text(json.dumps(manifest, indent=2))
