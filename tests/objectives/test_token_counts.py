"""`Batch.n_tokens` counts real input tokens: every position of a packed window, and only the
non-pad positions of a right-padded row. The loop counts tokens seen, tokens/s, train.max_tokens
and the token schedule with it, so every objective that pads must say which positions are real."""

from __future__ import annotations

import pytest
import torch

from graft.data.chat import DEFAULT_CHAT_TEMPLATE
from graft.data.records import Conversation, Message, TextRecord
from graft.data.shards import TokenShards, prepare_shards
from graft.data.tagged import TaggedSentence
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.objectives.batch import Batch
from graft.objectives.classify import Classify
from graft.objectives.clm import CausalLM
from graft.objectives.denoise import Denoise
from graft.objectives.instruct import Instruct
from graft.objectives.mix import Mixture
from graft.objectives.mlm import MaskedLM
from graft.objectives.nsp import NextSentence
from graft.objectives.tokens import TagTokens

SEQ = 64
WORDS = "ab cde f ghij kl mnopq rs t uvw xyz".split()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return bytes_tokenizer(sentinels=8)


@pytest.fixture(scope="module")
def short_documents(
    tmp_path_factory: pytest.TempPathFactory, make_corpus, tokenizer: Tokenizer
) -> tuple[TokenShards, TokenShards]:
    """Documents shorter than SEQ, so NSP pairs cannot always fill a row."""
    root = tmp_path_factory.mktemp("short_documents")
    make_corpus(root / "docs", documents=30, words=5)
    prepare_shards([root / "docs"], tokenizer, root / "data", progress=False)
    return TokenShards.open(root / "data", "train"), TokenShards.open(root / "data", "val")


def real_positions(batch: Batch, pad_id: int) -> int:
    """The independent count: positions whose input is not the pad token (the bytes tokenizer's
    pad id never occurs in text, and masking never writes it)."""
    return int((batch.input_ids != pad_id).sum())


def texts(n: int) -> list[str]:
    """Texts of 1..n words: rows of a batch have very different lengths."""
    return [" ".join(WORDS[: 1 + i % len(WORDS)]) for i in range(n)]


def draws(objective, batch_size: int = 8, n: int = 4) -> list[Batch]:
    generator = torch.Generator().manual_seed(3)
    return [objective.train_batch(batch_size, generator) for _ in range(n)] + list(
        objective.eval_batches(batch_size, 2)
    )


def check_padded(batches: list[Batch], pad_id: int) -> None:
    for batch in batches:
        assert batch.n_tokens == real_positions(batch, pad_id)
    # The check means something: some of these batches are padded.
    assert any(b.n_tokens < b.input_ids.numel() for b in batches)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classify_batches_count_their_unpadded_tokens(tokenizer, bidirectional: bool) -> None:
    records = [TextRecord(t, "ab"[i % 2], f"r:{i}") for i, t in enumerate(texts(20))]
    objective = Classify(records, records, tokenizer, ("a", "b"), SEQ, bidirectional=bidirectional)
    check_padded(draws(objective), tokenizer.pad_id)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_token_tagging_batches_count_their_unpadded_tokens(tokenizer, bidirectional: bool) -> None:
    sentences = [
        TaggedSentence(tuple(t.split()), ("B-X", *["O"] * (len(t.split()) - 1)), f"s:{i}")
        for i, t in enumerate(texts(20))
    ]
    objective = TagTokens(
        sentences, sentences, tokenizer, ("O", "B-X"), SEQ, bidirectional=bidirectional
    )
    check_padded(draws(objective), tokenizer.pad_id)


def test_instruct_batches_count_their_unpadded_tokens(tokenizer) -> None:
    conversations = [
        Conversation((Message("user", t), Message("assistant", t[::-1])), f"c:{i}")
        for i, t in enumerate(texts(20))
    ]
    objective = Instruct(conversations, conversations, tokenizer, DEFAULT_CHAT_TEMPLATE, 2 * SEQ)
    check_padded(draws(objective), tokenizer.pad_id)


@pytest.mark.parametrize("with_mlm", [False, True])
def test_nsp_pairs_count_their_unpadded_tokens(tokenizer, short_documents, with_mlm) -> None:
    train, val = short_documents
    objective = NextSentence(train, val, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=with_mlm)
    batches = draws(objective)
    check_padded(batches, tokenizer.pad_id)
    for batch in batches:  # the keys the pair attends to are exactly its real tokens
        assert batch.attention_mask is not None
        assert int(batch.attention_mask.sum()) == batch.n_tokens


@pytest.mark.parametrize("style", ["t5", "bart"])
def test_denoise_rows_count_their_unpadded_tokens(tokenizer, short_documents, style) -> None:
    train, val = short_documents
    for batch in draws(Denoise(train, val, SEQ, tokenizer, style=style)):
        assert batch.n_tokens == real_positions(batch, tokenizer.pad_id)


def test_packed_windows_count_every_position(tokenizer, short_documents) -> None:
    """clm and mlm windows are full: B x T, the pre-training count as it always was."""
    train, val = short_documents
    for objective in (
        CausalLM(train, val, SEQ),
        MaskedLM(train, val, SEQ, tokenizer, tokenizer.vocab_size),
    ):
        for batch in draws(objective, batch_size=3):
            assert batch.n_tokens == batch.input_ids.numel() == 3 * SEQ


def test_a_mixture_keeps_its_parts_counts(tokenizer, short_documents) -> None:
    train, val = short_documents
    nsp = NextSentence(train, val, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=False)
    mixture = Mixture({"clm": (CausalLM(train, val, SEQ), 0.5), "nsp": (nsp, 0.5)})
    batches = draws(mixture, n=12)
    assert {b.part for b in batches} == {"clm", "nsp"}
    check_padded(batches, tokenizer.pad_id)


def test_n_tokens_without_lengths_is_every_position_and_with_them_their_sum() -> None:
    ids = torch.zeros(3, 5, dtype=torch.long)
    assert Batch(ids).n_tokens == 15
    assert Batch(ids, lengths=torch.tensor([5, 1, 3])).n_tokens == 9
