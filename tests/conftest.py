"""Shared fixtures: a small generated text corpus and its token shards, built once per session.

Session fixtures are shared by every test that asks for them: treat the paths they return as
read-only (copy them into `tmp_path` before changing anything). `make_corpus` writes a fresh,
private corpus wherever a test wants one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

_WORDS = (
    "the a one every small large quick slow brown red model token shard text data river stone "
    "fox dog cat bird tree house light night day runs reads writes sees finds keeps makes takes "
    "over under near with from into and but or because while then"
).split()


def write_corpus(directory: Path, *, documents: int = 12, words: int = 120, seed: int = 0) -> Path:
    """Write `documents` .txt files of seeded pseudo-English (~6 bytes a word) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        rng = random.Random(seed * 1_000_003 + i)
        sentences, left = [], words
        while left > 0:
            n = min(left, rng.randint(4, 12))
            left -= n
            sentence = " ".join(rng.choice(_WORDS) for _ in range(n))
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?"))
        lines = [" ".join(sentences[j : j + 4]) for j in range(0, len(sentences), 4)]
        (directory / f"doc{i:03d}.txt").write_text(
            f"Document {i}.\n" + "\n".join(lines) + "\n", encoding="utf-8"
        )
    return directory


@pytest.fixture(scope="session")
def make_corpus() -> Callable[..., Path]:
    """`make_corpus(directory, documents=12, words=120, seed=0)` writes a private corpus."""
    return write_corpus


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 12 small .txt documents (about 8 KB in all). Read-only."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="session")
def bytes_data(tmp_path_factory: pytest.TempPathFactory, text_corpus: Path) -> Path:
    """`text_corpus` prepared with the bytes tokenizer into train/val shards. Read-only."""
    from graft.data.shards import prepare_shards
    from graft.data.tokenizer import bytes_tokenizer

    out = tmp_path_factory.mktemp("bytes_data") / "data"
    prepare_shards([text_corpus], bytes_tokenizer(), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model() -> dict[str, object]:
    """A model section small enough for a CPU step in milliseconds (the nano preset, shrunk)."""
    return {"preset": "nano", "max_seq_len": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}
