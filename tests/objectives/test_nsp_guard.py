"""Regression guard: next-sentence prediction (`graft pretrain --objective nsp`) learns.

On real text, BERT-style NSP needs far more compute than a CPU test has, so a broken NSP path
(pair labels, the pooler or head wiring, the loss, the loop) would go unnoticed there. Here every
document is written in its own alphabet, disjoint from every other document's: a pair whose B
follows A shares its characters, a pair whose B comes from another document (an NSP negative)
shares none. The bert-nano preset solves that within a couple of hundred steps, so the guard runs
the real `pretrain` setup and asserts validation NSP accuracy climbs from chance to >= 0.95 (the
issue's bar: within 2 CPU-minutes on the nano preset; this takes ~11 s).

Not covered: the task is solvable without segment ids (one alphabet or two) and accuracy does not
depend on which label means "follows"; test_objectives.py checks those.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from graft.config import load_run_config
from graft.data.shards import TokenShards, prepare_shards
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.objectives.batch import Batch
from graft.objectives.nsp import NextSentence
from graft.train.pretrain import pretrain

DOCUMENTS = 6  # per split, one alphabet each; more than two so a negative's document varies
ALPHABET = 2  # letters per document: small alphabets are the quickest for the model to tell apart
SEQ_LEN = 32  # 29 content tokens: each segment has >= 7, so it spans its document's whole alphabet
BATCH = 32
EVAL_BATCHES = 8  # 256 validation pairs: one wrong pair moves the accuracy by 0.004
STEPS = 140  # seed 0: accuracy 1.0 here, 0.65 at step 100; 10 of 10 seeds: 1.0 at 200
LR = 7e-4  # 1e-3 sometimes stalled in a partial solution (~0.8) for this post-norm encoder
WARMUP = 30  # a short warm-up left some seeds at chance (loss ln 2) for 100+ steps
SEED = 0


def alphabets() -> list[str]:
    letters = string.ascii_lowercase
    return [letters[i * ALPHABET : (i + 1) * ALPHABET] for i in range(DOCUMENTS)]


def write_documents(directory: Path, rng: random.Random, length: int) -> Path:
    """One .txt document per alphabet: shuffled copies of the alphabet back to back, so every
    window of 2 * ALPHABET - 1 characters holds all of it (a positive pair always shares the
    same characters) and the order inside a document carries nothing to learn."""
    directory.mkdir(parents=True)
    for i, alphabet in enumerate(alphabets()):
        blocks = [rng.sample(alphabet, len(alphabet)) for _ in range(length // len(alphabet))]
        (directory / f"doc{i}.txt").write_text("".join(map("".join, blocks)), encoding="utf-8")
    return directory


def prepare_pair_task(root: Path) -> Path:
    """Train and val splits written apart (not a random split of the documents), so each split
    holds one document per alphabet and its negatives are all disjoint."""
    rng = random.Random(0)
    train = write_documents(root / "docs" / "train", rng, length=600)
    val = write_documents(root / "docs" / "val", rng, length=200)
    prepare_shards([train], bytes_tokenizer(), root / "data", val_inputs=[val], progress=False)
    return root / "data"


def segment_vocabularies(batch: Batch) -> list[tuple[set[int], set[int], int]]:
    """(A's token ids, B's token ids, label) of each `[CLS] A [SEP] B [SEP]` pair in `batch`."""
    assert batch.token_type_ids is not None and batch.sequence_targets is not None
    assert batch.attention_mask is not None
    pairs = []
    real = batch.attention_mask[:, 0, 0, :]  # (B, 1, 1, T) key mask: the unpadded positions
    for ids, types, keep, label in zip(
        batch.input_ids, batch.token_type_ids, real, batch.sequence_targets
    ):
        ids, types = ids[keep], types[keep]
        first = set(ids[types == 0][1:-1].tolist())  # less [CLS] and A's [SEP]
        second = set(ids[types == 1][:-1].tolist())  # less B's [SEP]
        pairs.append((first, second, int(label)))
    return pairs


def assert_negatives_are_disjoint(batches: list[Batch]) -> None:
    pairs = [pair for batch in batches for pair in segment_vocabularies(batch)]
    alphabet_ids = {ord(c) for c in "".join(alphabets())}  # bytes tokenizer: id == byte value
    for first, second, label in pairs:
        assert first and second and first | second <= alphabet_ids  # letters only, no specials
        if label == 0:  # B follows A (BertForPreTraining's convention)
            assert first == second, "a positive pair must share its whole alphabet"
        else:
            assert not first & second, "a negative pair must share no token"
    negatives = sum(label for _, _, label in pairs) / len(pairs)
    assert 0.3 < negatives < 0.7  # so 0.95 cannot come from always giving one answer


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the run: this model is too small to gain from more, and on a
    busy 2-core machine torch's threads wait on each other (measured: 126 s with 2 threads, 20 s
    with 1). The settings above were chosen on one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_nsp_learns_pairs_whose_negatives_use_a_disjoint_vocabulary(tmp_path: Path) -> None:
    data = prepare_pair_task(tmp_path)
    tokenizer = Tokenizer.load(data)
    train, val = TokenShards.open(data, "train"), TokenShards.open(data, "val")
    # The pairs the test measures: with the same batch size and count, the run's objective
    # builds these same fixed validation batches (they are drawn from a fixed seed).
    probe = NextSentence(train, val, SEQ_LEN, tokenizer, tokenizer.vocab_size, with_mlm=False)
    assert_negatives_are_disjoint(probe.eval_batches(BATCH, EVAL_BATCHES))
    assert_negatives_are_disjoint([probe.train_batch(BATCH, torch.Generator().manual_seed(0))])

    # What `graft pretrain --objective nsp --model.preset=bert-nano` builds, on the CPU.
    config = load_run_config(
        None,
        [
            "objective.name=nsp",
            f"data.path={data}",
            f"train.out_dir={tmp_path / 'run'}",
            "model.preset=bert-nano",
            f"train.seq_len={SEQ_LEN}",
            f"train.batch_size={BATCH}",
            f"train.max_steps={STEPS}",
            f"train.eval_every={STEPS}",
            f"train.eval_batches={EVAL_BATCHES}",
            f"train.log_every={STEPS}",
            f"train.seed={SEED}",
            "train.device=cpu",
            "train.progress=false",
            f"optim.lr={LR}",
            f"optim.warmup_steps={WARMUP}",
        ],
    )
    result = pretrain(config)

    first, last = result.evals[0], result.evals[-1]
    # The untrained model is at chance: the bar below measures learning, not a lucky start.
    assert first["step"] == 0 and first["val/nsp_acc"] < 0.8, first
    assert last["step"] == STEPS and last["val/nsp_acc"] >= 0.95, last
