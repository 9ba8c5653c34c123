"""Tests for graft.data.shards: preparing token shards and reading them back."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import models

from graft.data import shards as shards_module
from graft.data.documents import count_documents
from graft.data.shards import (
    INDEX_FILE,
    ShardIndex,
    TokenShards,
    prepare_shards,
    token_dtype,
)
from graft.data.tokenizer import Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import ConfigError, DataError, TokenizerError

BYTES = bytes_tokenizer()
EOT_ID = BYTES.eot_id


def write_docs(folder: Path, count: int, prefix: str = "doc") -> list[str]:
    """`count` small .txt documents; returns their texts in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for i in range(count):
        text = f"{prefix} {i}: café 日本 😀 " + "words " * (i % 7 + 1)
        (folder / f"{prefix}{i:03d}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


def split_documents(ids: np.ndarray, eot_id: int) -> list[list[int]]:
    """Cut a token stream after every EOT."""
    docs, current = [], []
    for token in ids.tolist():
        current.append(token)
        if token == eot_id:
            docs.append(current)
            current = []
    assert current == [], "stream does not end with EOT"
    return docs


def read_split(directory: Path, split: str) -> np.ndarray:
    return np.asarray(TokenShards.open(directory, split).tokens)


def test_prepare_writes_both_splits_with_eot_after_every_document(tmp_path: Path) -> None:
    texts = write_docs(tmp_path / "in", 40)
    (tmp_path / "in" / "more.jsonl").write_text(
        "".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(10))
    )
    texts += [f"record {i}" for i in range(10)]
    index = prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["index.json", "tokenizer.json", "train.bin", "val.bin"]
    assert index == ShardIndex.load(out)
    assert index.dtype == "uint16" and index.vocab_size == 262 and index.eot_id == EOT_ID
    assert index.tokenizer_sha256 == BYTES.sha256 and index.tokenizer_kind == "bytes"
    assert index.sources == [str(p) for p in sorted((tmp_path / "in").iterdir())]
    seen = []
    for split in ("train", "val"):
        ids = read_split(out, split)
        docs = split_documents(ids, EOT_ID)
        info = index.splits[split]
        assert info.documents == len(docs) >= 1
        assert info.tokens == len(ids)
        decoded = [BYTES.decode(d[:-1]) for d in docs]
        assert info.bytes == sum(len(t.encode()) for t in decoded)
        seen += decoded
    assert sorted(seen) == sorted(texts)
    # Document order is kept within each split.
    train_docs = [BYTES.decode(d[:-1]) for d in split_documents(read_split(out, "train"), EOT_ID)]
    assert train_docs == [t for t in texts if t in set(train_docs)]
    assert Tokenizer.load(out).sha256 == BYTES.sha256


def test_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 60)
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare_shards([tmp_path / "in"], BYTES, tmp_path / name, seed=seed, progress=False)
        runs[name] = [(tmp_path / name / f).read_bytes() for f in ("train.bin", "val.bin")]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize("val_fraction", [0.1, 0.9])
def test_the_coin_gives_each_split_at_least_one_document(
    tmp_path: Path, val_fraction: float
) -> None:
    """10 documents, the fewest the coin deals at 0.1 (and 0.9): a seed whose coin leaves a
    split empty still gives it one whole document."""
    write_docs(tmp_path / "in", 10)
    wanted = val_fraction < 0.5  # the split the coin leaves empty: val at 0.1, train at 0.9
    seed = next(
        s for s in range(100) if all((np.random.default_rng(s).random(10) < val_fraction) != wanted)
    )
    index = prepare_shards(
        [tmp_path / "in"],
        BYTES,
        tmp_path / "out",
        val_fraction=val_fraction,
        seed=seed,
        progress=False,
        say=lambda line: None,
    )
    for split in ("train", "val"):
        info = index.splits[split]
        docs = split_documents(read_split(tmp_path / "out", split), EOT_ID)
        assert info.documents == len(docs) >= 1 and info.bytes > 0
    assert min(info.documents for info in index.splits.values()) == 1


def test_too_few_documents_for_the_coin_are_each_split_by_position(tmp_path: Path) -> None:
    """Two books at --val-fraction 0.1: the coin gave one of them to val (half the tokens, or
    more). Each is split instead: its first 90% of tokens train, the rest val, in order."""
    books = {
        "a.txt": "".join(f"Line {i} of the first book, with ümlauts.\n" for i in range(400)),
        "b.txt": "".join(f"Line {i} of the second.\n" for i in range(150)),
    }
    for name, text in books.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    streams = [BYTES.encode(text) + [EOT_ID] for text in books.values()]
    heads = [round(len(stream) * 0.9) for stream in streams]
    said: list[str] = []
    for seed in range(3):  # whichever split the coin picks, the result is the same
        index = prepare_shards(
            [tmp_path / name for name in books],
            BYTES,
            tmp_path / "out",
            seed=seed,
            progress=False,
            say=said.append,
        )
        train, val = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "val")
        # Train: the heads with an EOT between them; val: the tails, each ending with its EOT.
        assert train.tolist() == streams[0][: heads[0]] + [EOT_ID] + streams[1][: heads[1]]
        assert val.tolist() == streams[0][heads[0] :] + streams[1][heads[1] :]
        assert len(val) / (len(train) + len(val)) == pytest.approx(0.1, abs=0.001)
        assert [index.splits[s].documents for s in ("train", "val")] == [2, 2]
        text_bytes = sum(len(text.encode()) for text in books.values())
        assert index.splits["train"].bytes + index.splits["val"].bytes == text_bytes
        assert index.splits["val"].bytes == pytest.approx(text_bytes * 0.1, abs=2)
    assert said == []


def test_a_share_far_from_the_fraction_is_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten documents, one of them long: whichever split the coin gives it, val's share is far
    from 10%, and one line says so and how to fix it."""
    write_docs(tmp_path / "in", 9)
    (tmp_path / "in" / "long.txt").write_text("a long book " * 2000, encoding="utf-8")
    index = prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    train, val = index.splits["train"].tokens, index.splits["val"].tokens
    assert not 0.05 <= val / (train + val) <= 0.2
    notice = capsys.readouterr().err.splitlines()
    assert notice == [
        f"notice: val holds {val / (train + val):.1%} of the tokens ({val:,} of "
        f"{train + val:,}), far from --val-fraction 0.1 (each document went to one split "
        "whole); hold out files with --val FILES, cut texts into more documents with "
        "--split-on REGEX, or add documents"
    ]
    # Many documents of like sizes come near the fraction, and nothing is said.
    write_docs(tmp_path / "many", 200)
    index = prepare_shards([tmp_path / "many"], BYTES, tmp_path / "out", progress=False)
    val = index.splits["val"].tokens
    assert 0.05 <= val / (val + index.splits["train"].tokens) <= 0.2
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_single_document_is_split_by_position(tmp_path: Path, suffix: str) -> None:
    text = "".join(f"Line {i} of the only play, with ümlauts.\n" for i in range(500))
    path = tmp_path / f"shakespeare{suffix}"
    path.write_text(json.dumps({"text": text}) if suffix == ".jsonl" else text, encoding="utf-8")
    for seed in range(3):  # whichever split the coin picks, the result is the same
        index = prepare_shards([path], BYTES, tmp_path / "out", seed=seed, progress=False)
        train, val = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "val")
        stream = BYTES.encode(text) + [EOT_ID]
        assert len(train) == round(len(stream) * 0.9)
        assert np.concatenate([train, val]).tolist() == stream
        assert index.splits["train"].bytes + index.splits["val"].bytes == len(text.encode())
        assert index.splits["val"].bytes == pytest.approx(len(text.encode()) * 0.1, abs=2)


def test_held_out_val_inputs_replace_the_coin(tmp_path: Path) -> None:
    train_texts = write_docs(tmp_path / "books", 5, prefix="book")
    val_texts = write_docs(tmp_path / "wiki", 2, prefix="wiki")
    out = tmp_path / "out"
    index = prepare_shards(
        [tmp_path / "books"],
        BYTES,
        out,
        val_inputs=[tmp_path / "wiki"],
        val_fraction=0.5,
        progress=False,
    )
    for split, texts in (("train", train_texts), ("val", val_texts)):
        docs = split_documents(read_split(out, split), EOT_ID)
        assert [BYTES.decode(d[:-1]) for d in docs] == texts  # all of them, in order
        assert index.splits[split].documents == len(texts)
    books = [str(p) for p in sorted((tmp_path / "books").iterdir())]
    wiki = [str(p) for p in sorted((tmp_path / "wiki").iterdir())]
    assert index.splits["train"].sources == books and index.splits["val"].sources == wiki
    assert index.sources == books + wiki
    assert ShardIndex.load(out) == index
    saved = json.loads((out / INDEX_FILE).read_text())
    assert saved["splits"]["val"]["sources"] == wiki


def test_a_single_document_on_each_side_is_not_split_by_position(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("only training text", encoding="utf-8")
    (tmp_path / "val.txt").write_text("only val text", encoding="utf-8")
    prepare_shards(
        [tmp_path / "train.txt"],
        BYTES,
        tmp_path / "out",
        val_inputs=[tmp_path / "val.txt"],
        progress=False,
    )
    assert read_split(tmp_path / "out", "val").tolist() == BYTES.encode("only val text") + [EOT_ID]


def test_val_inputs_must_not_overlap_and_must_hold_text(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 3)
    with pytest.raises(DataError, match=r"doc001\.txt: is both a training input and a val input"):
        prepare_shards(
            [tmp_path / "in"],
            BYTES,
            tmp_path / "out",
            val_inputs=[tmp_path / "in" / "doc001.txt"],
            progress=False,
        )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty: every document is empty"):
        prepare_shards(
            [tmp_path / "in"],
            BYTES,
            tmp_path / "out",
            val_inputs=[tmp_path / "empty"],
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_splits_without_their_own_sources_write_and_read_as_before(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 6)
    index = prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    # No "sources" key per split: an index.json written before held-out corpora looks the same.
    assert all(
        set(info) == {"file", "tokens", "documents", "bytes"} for info in saved["splits"].values()
    )
    assert all(info.sources is None for info in index.splits.values())
    assert ShardIndex.load(tmp_path / "out") == index
    saved["splits"]["val"]["sources"] = "wiki.txt"
    (tmp_path / "out" / INDEX_FILE).write_text(json.dumps(saved))
    with pytest.raises(
        DataError, match=r"index\.json: splits\.val: 'sources' must be list, got str"
    ):
        ShardIndex.load(tmp_path / "out")


def test_single_document_with_a_trained_tokenizer_round_trips(tmp_path: Path) -> None:
    text = "To be, or not to be, that is the question:\n" * 300
    path = tmp_path / "one.txt"
    path.write_text(text)
    tok = train_tokenizer(iter([text]), kind="bpe", vocab_size=300)
    prepare_shards([path], tok, tmp_path / "out", val_fraction=0.25, progress=False)
    shards = TokenShards.open(tmp_path / "out", expected_tokenizer_sha256=tok.sha256)
    val = TokenShards.open(tmp_path / "out", "val")
    ids = np.concatenate([shards.tokens, val.tokens]).tolist()
    assert ids[-1] == tok.eot_id and tok.decode(ids[:-1]) == text
    assert len(shards) == round(len(ids) * 0.75)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_pieces_encode_like_the_whole_document(tmp_path: Path, kind: str) -> None:
    # Long enough for several encode pieces; cuts fall between words, which must not
    # change a single token compared with encoding the document in one go.
    rng = np.random.default_rng(1)
    words = np.array(["the", "cat", "sat,", "on", "mat.", "naïve", "日本", "x=1;", "\n", "  "])
    text = " ".join(words[rng.integers(0, len(words), size=80_000)].tolist())
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    tok = train_tokenizer(iter([text[:20_000]]), kind=kind, vocab_size=300)
    prepare_shards([path], tok, tmp_path / "out", progress=False)
    train = read_split(tmp_path / "out", "train")
    val = read_split(tmp_path / "out", "val")
    assert np.concatenate([train, val]).tolist() == tok.encode(text) + [tok.eot_id]


def test_output_has_ordinary_permissions(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out" / "tokenizer.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_dtype_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert token_dtype(262) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    texts = write_docs(tmp_path / "in", 12)
    monkeypatch.setattr(Tokenizer, "vocab_size", property(lambda self: 100_000))
    index = prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    assert index.dtype == "uint32" and index.vocab_size == 100_000
    train = TokenShards.open(tmp_path / "out")
    assert train.tokens.dtype == np.uint32
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * len(train)
    stream = np.concatenate([train.tokens, read_split(tmp_path / "out", "val")])
    docs = split_documents(stream, EOT_ID)
    assert sorted(BYTES.decode(d[:-1]) for d in docs) == sorted(texts)


def test_token_shards_reads_a_split(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 20)
    index = prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    shards = TokenShards.open(tmp_path / "out", "val", expected_tokenizer_sha256=BYTES.sha256)
    assert isinstance(shards.tokens, np.memmap) and shards.tokens.ndim == 1
    assert not shards.tokens.flags.writeable
    assert len(shards) == index.splits["val"].tokens
    info = index.splits["val"]
    assert shards.bytes_per_token == info.bytes / info.tokens
    with pytest.raises(DataError, match=r"index\.json: no split 'test'; it has train, val"):
        TokenShards.open(tmp_path / "out", "test")


def test_missing_index_is_not_a_prepared_directory(tmp_path: Path) -> None:
    expected = (
        r"is not a prepared data directory \(no index\.json\); run `graft data prepare` first"
    )
    with pytest.raises(DataError, match=expected):
        TokenShards.open(tmp_path)


def test_truncated_bin_is_detected(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 10)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    train = tmp_path / "out" / "train.bin"
    os.truncate(train, train.stat().st_size - 2)
    expected = r"train\.bin: \d+ bytes, but .*index\.json records \d+ uint16 tokens .* truncated"
    with pytest.raises(DataError, match=expected):
        ShardIndex.load(tmp_path / "out")
    with pytest.raises(DataError, match="truncated"):
        TokenShards.open(tmp_path / "out", "val")


def test_corrupt_index_names_the_key(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    index_file = tmp_path / "out" / INDEX_FILE
    data = json.loads(index_file.read_text())
    data["splits"]["train"]["tokens"] = "many"
    index_file.write_text(json.dumps(data))
    expected = r"index\.json: splits\.train: 'tokens' must be int, got str"
    with pytest.raises(DataError, match=expected):
        ShardIndex.load(tmp_path / "out")
    index_file.write_text("{")
    with pytest.raises(DataError, match=r"index\.json: line 1: invalid JSON"):
        ShardIndex.load(tmp_path / "out")


def test_tokenizer_hash_mismatch(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    other = "f" * 64
    expected = (
        rf"index\.json was prepared with tokenizer {BYTES.sha256[:12]} but the run uses "
        r"ffffffffffff; re-run `graft data prepare` with this tokenizer"
    )
    with pytest.raises(TokenizerError, match=expected):
        TokenShards.open(tmp_path / "out", expected_tokenizer_sha256=other)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    index_file = tmp_path / "out" / INDEX_FILE
    data = json.loads(index_file.read_text())
    data["splits"]["val"].update(tokens=0, documents=0, bytes=0)
    index_file.write_text(json.dumps(data))
    (tmp_path / "out" / "val.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"val\.bin: the 'val' split is empty"):
        TokenShards.open(tmp_path / "out", "val")


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text("\n\n")
    expected = r"every document is empty; graft reads text from \.txt, \.md, \.jsonl"
    with pytest.raises(DataError, match=expected):
        prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no leftovers


def test_bad_jsonl_line_late_leaves_existing_output_untouched(tmp_path: Path) -> None:
    write_docs(tmp_path / "good", 10)
    prepare_shards([tmp_path / "good"], BYTES, tmp_path / "out", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    write_docs(tmp_path / "bad", 30)
    lines = [json.dumps({"text": f"record {i} " * 50}) for i in range(500)]
    lines[457] = '{"text": "unterminated'
    (tmp_path / "bad" / "zz.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"zz\.jsonl:458: invalid JSON"):
        prepare_shards([tmp_path / "bad"], BYTES, tmp_path / "out", batch_size=4, progress=False)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "out"]


def test_existing_prepared_directory_is_replaced(tmp_path: Path) -> None:
    write_docs(tmp_path / "a", 4, prefix="alpha")
    write_docs(tmp_path / "b", 12, prefix="beta")
    prepare_shards([tmp_path / "a"], BYTES, tmp_path / "out", progress=False)
    index = prepare_shards([tmp_path / "b"], BYTES, tmp_path / "out", progress=False)
    assert ShardIndex.load(tmp_path / "out") == index
    assert sum(info.documents for info in index.splits.values()) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_refuses_to_replace_a_folder_that_is_not_prepared(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=r"mine: exists and is not a prepared data directory"):
        prepare_shards([tmp_path / "in"], BYTES, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_argument_and_tokenizer_validation(tmp_path: Path) -> None:
    write_docs(tmp_path / "in", 4)
    with pytest.raises(ConfigError, match="val_fraction must be between 0 and 1"):
        prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", val_fraction=0.0)
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_shards([tmp_path / "nope"], BYTES, tmp_path / "out")
    no_specials = Tokenizer(tokenizers.Tokenizer(models.BPE(vocab={"a": 0}, merges=[])))
    with pytest.raises(TokenizerError, match=r"bpe tokenizer has no <\|endoftext\|> token"):
        prepare_shards([tmp_path / "in"], no_specials, tmp_path / "out")


def test_progress_goes_to_stderr_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out2", progress=False)
    assert capsys.readouterr().err == ""


def generated_text(rng: np.random.Generator, n_words: int, words: np.ndarray) -> str:
    picked = words[rng.integers(0, len(words), size=n_words)]
    picked[rng.integers(0, n_words, size=n_words // 12)] = "\n"
    return " ".join(picked.tolist())


@pytest.mark.slow
def test_memory_stays_flat_as_the_corpus_grows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    letters = [
        "".join(chr(c) for c in rng.integers(97, 123, size=rng.integers(1, 9))) for _ in range(3000)
    ]
    words = np.array(letters + ["café", "日本", "😀", "naïve"])
    blocks = [generated_text(rng, 45_000, words) for _ in range(8)]  # ~256 KB each
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):  # ~30 MB over 30 files, half .txt, half .jsonl
        text = "".join(blocks[j] for j in rng.permutation(8)[:4])
        if i % 2:
            (corpus / f"part{i:02d}.txt").write_text(text, encoding="utf-8")
        else:
            paragraphs = text.split("\n")
            records = ("\n".join(paragraphs[k : k + 20]) for k in range(0, len(paragraphs), 20))
            (corpus / f"part{i:02d}.jsonl").write_text(
                "".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8"
            )
    single = tmp_path / "single.txt"  # ~20 MB, one document
    with single.open("w", encoding="utf-8") as handle:
        for i in range(80):
            handle.write(blocks[i % 8])

    for inputs in ([corpus], [single]):
        size = sum(p.stat().st_size for p in (corpus.iterdir() if inputs == [corpus] else [single]))
        tracemalloc.start()
        try:
            index = prepare_shards(inputs, BYTES, tmp_path / "out", progress=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.25 * size, f"peak {peak / 1e6:.1f} MB for {size / 1e6:.1f} MB of input"
        total_bytes = sum(info.bytes for info in index.splits.values())
        assert index.splits["val"].tokens > 0
        if inputs == [single]:
            assert total_bytes == single.stat().st_size
            assert index.splits["train"].tokens == round((total_bytes + 1) * 0.9)
        else:
            assert sum(info.documents for info in index.splits.values()) == count_documents(inputs)


@pytest.mark.parametrize("piece", [1 << 26, 3])
def test_ids_past_the_recorded_vocabulary_are_refused_on_open(
    piece: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged or foreign shard fails when opened, not at the first batch that draws the id;
    the position is right whether or not the bad id is in the first piece checked."""
    monkeypatch.setattr(shards_module, "_CHECK_TOKENS", piece)
    write_docs(tmp_path / "in", 4)
    prepare_shards([tmp_path / "in"], BYTES, tmp_path / "out", progress=False)
    train = tmp_path / "out" / "train.bin"
    ids = np.fromfile(train, dtype=np.uint16)
    ids[4] = BYTES.vocab_size - 1  # the last id is in the vocabulary
    ids.tofile(train)
    TokenShards.open(tmp_path / "out")
    ids[7] = BYTES.vocab_size
    ids.tofile(train)
    with pytest.raises(DataError) as refused:
        TokenShards.open(tmp_path / "out")
    assert str(refused.value) == (
        f"{train}: token id 262 at position 7 is outside the vocabulary of 262 that index.json "
        "records; the file is damaged or another's; re-run `graft data prepare`"
    )
