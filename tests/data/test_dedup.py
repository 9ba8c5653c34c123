"""Tests for graft.data.dedup: near-duplicate recall and precision at the default settings on a
generated corpus with planted edited copies, exact duplicates, decontamination, the cluster
report, and `graft data clean | graft data dedup` composed in a shell pipe."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graft.cli import main
from graft.data import dedup
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, CorpusWriter, read_corpus
from graft.data.dedup import (
    DedupConfig,
    DedupStage,
    exact_key,
    lsh_params,
    minhash_signature,
    read_eval_ngrams,
    shingle_hashes,
)
from graft.errors import ConfigError, DataError

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocabulary(rng: random.Random, size: int = 6000) -> tuple[list[str], list[float]]:
    """Made-up words of 2-9 letters with Zipfian frequencies, as words have in real text (so
    a few words are everywhere and short shingles recur across unrelated documents)."""
    words = sorted({"".join(rng.choices(_LETTERS, k=rng.randint(2, 9))) for _ in range(size)})
    rng.shuffle(words)
    return words, [1.0 / (rank + 1) for rank in range(len(words))]


def _sentences(rng: random.Random, count: int) -> list[str]:
    words, weights = _vocabulary(rng)
    cumulative = list(itertools.accumulate(weights))  # once, not per call of choices
    sentences: set[str] = set()
    while len(sentences) < count:
        chosen = rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 24))
        sentences.add(" ".join(chosen).capitalize() + rng.choice("..!?"))
    ordered = sorted(sentences)
    rng.shuffle(ordered)
    return ordered


def _edited(rng: random.Random, text: str, rate: float, pool: list[str]) -> str:
    """`text` with round(rate * words) random word substitutions, insertions and deletions."""
    words = text.split()
    for _ in range(max(1, round(rate * len(words)))):
        at = rng.randrange(len(words))
        edit = rng.choice("sid")
        if edit == "s":
            words[at] = rng.choice(pool)
        elif edit == "i":
            words.insert(at, rng.choice(pool))
        elif len(words) > 1:
            del words[at]
    return " ".join(words)


def _planted_corpus(
    seed: int = 0, originals: int = 600, copies: int = 150, overlaps: int = 60
) -> list[tuple[str, str, int]]:
    """(text, kind, original) triples: `originals` distinct documents of 150-300 words, then,
    shuffled, `copies` near-duplicates (an original with 2-5% of its words edited) and
    `overlaps` hard negatives (an original's first half with new sentences after it: related,
    but no duplicate). Every copy comes after its original."""
    rng = random.Random(seed)
    sentences = iter(_sentences(rng, 20_000))
    documents: list[list[str]] = []
    for _ in range(originals):
        target, doc = rng.randint(150, 300), list[str]()
        while sum(len(s.split()) for s in doc) < target:
            doc.append(next(sentences))
        documents.append(doc)
    texts = [" ".join(doc) for doc in documents]
    pool = " ".join(texts[:50]).split()
    items = [(text, "original", i) for i, text in enumerate(texts)]
    tail = []
    for _ in range(copies):
        i = rng.randrange(originals)
        tail.append((_edited(rng, texts[i], rng.uniform(0.02, 0.05), pool), "copy", i))
    for _ in range(overlaps):
        i = rng.randrange(originals)
        half = documents[i][: len(documents[i]) // 2]
        rest, words = list[str](), sum(len(s.split()) for s in documents[i][len(half) :])
        while sum(len(s.split()) for s in rest) < words:
            rest.append(next(sentences))
        tail.append((" ".join(half + rest), "overlap", i))
    rng.shuffle(tail)
    return items + tail


def _docs(texts: list[str]) -> list[CorpusDoc]:
    return [CorpusDoc(text, "test", f"doc{i}") for i, text in enumerate(texts)]


def test_near_duplicates_found_with_high_recall_and_precision_at_the_defaults() -> None:
    """The Must-show: planted copies edited at 2-5% of their words are dropped, nothing else."""
    corpus = _planted_corpus()
    stage = DedupStage(DedupConfig(workers=1))
    kept = {doc.location for doc in stage(_docs([text for text, _, _ in corpus]))}
    dropped = [i for i in range(len(corpus)) if f"doc{i}" not in kept]
    planted = [i for i, (_, kind, _) in enumerate(corpus) if kind == "copy"]
    recall = sum(f"doc{i}" not in kept for i in planted) / len(planted)
    precision = sum(corpus[i][1] == "copy" for i in dropped) / len(dropped)
    config = DedupConfig()
    print(
        f"\nnear-duplicates at threshold {config.threshold}, {config.shingle}-word shingles, "
        f"{config.num_perm} permutations: recall {recall:.3f} ({len(planted)} planted), "
        f"precision {precision:.3f} ({len(dropped)} dropped)"
    )
    assert recall >= 0.95
    assert precision >= 0.95
    assert stage.stats.rejected["near duplicate"] == len(dropped)
    assert stage.stats.docs_in == len(corpus) and stage.stats.docs_out == len(kept)
    # Half-shared documents are related but no duplicates: all kept.
    assert all(f"doc{i}" in kept for i, (_, kind, _) in enumerate(corpus) if kind == "overlap")


def test_the_signature_estimates_jaccard_similarity() -> None:
    rng = random.Random(1)
    a = " ".join(_sentences(rng, 30))
    b = _edited(rng, a, 0.04, a.split())
    shingles_a, shingles_b = set(shingle_hashes(a, 3).tolist()), set(shingle_hashes(b, 3).tolist())
    true = len(shingles_a & shingles_b) / len(shingles_a | shingles_b)
    estimate = float(np.mean(minhash_signature(a, 3) == minhash_signature(b, 3)))
    assert abs(true - estimate) < 0.12
    assert minhash_signature("...", 3) is None  # no word, no signature


def test_exact_duplicates_ignore_case_and_spacing() -> None:
    text = "The cat sat on the mat.\nIt was a sunny day, and the cat was happy."
    variants = [text, text.upper(), "  " + text.replace(" ", "\t  ") + "\n\n", text + " Yes."]
    assert len({exact_key(v) for v in variants[:3]}) == 1
    stage = DedupStage(DedupConfig(near=False, workers=1))
    kept = list(stage(_docs(variants)))
    assert [doc.location for doc in kept] == ["doc0", "doc3"]
    assert stage.stats.rejected == {"exact duplicate": 2}
    assert stage.stats.notes["clusters"] == {"count": 1, "largest": 3, "sizes": {"3": 1}}


def test_short_documents_are_compared_by_characters() -> None:
    # Fewer words than a shingle: the same words with other punctuation are one document.
    docs = _docs(["Hello, world!", "hello world", "Goodbye, moon."])
    stage = DedupStage(DedupConfig(exact=False, workers=1))
    assert [doc.location for doc in stage(docs)] == ["doc0", "doc2"]
    assert stage.stats.rejected == {"near duplicate": 1}


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


_EVAL = (
    "Question: which river flows through the old capital before it reaches the northern sea "
    "at the harbour town? Answer: the Vellan."
)


def test_decontamination_drops_documents_sharing_a_13_gram(tmp_path: Path) -> None:
    evals = _write_jsonl(tmp_path / "eval.jsonl", [{"text": _EVAL, "label": "x"}])
    words = _EVAL.split()
    thirteen = " ".join(words[3:16])  # 13 consecutive words of the evaluation text
    twelve = " ".join(words[3:15])
    docs = _docs(
        [
            f"Notes from the trip. {thirteen.upper()}; and then we went home.",
            f"Notes from another trip. {twelve} and then we went home.",
            "A document with nothing in common with the evaluation set at all.",
        ]
    )
    stage = DedupStage(DedupConfig(decontaminate=(evals,), near=False, workers=1))
    assert [doc.location for doc in stage(docs)] == ["doc1", "doc2"]
    assert stage.stats.rejected == {"contaminated": 1}
    assert stage.stats.notes["contaminated_by"] == {str(evals): 1}
    # A shorter n catches the 12-word overlap too; a text file is read whole.
    text_eval = tmp_path / "eval.txt"
    text_eval.write_text(_EVAL, encoding="utf-8")
    stage = DedupStage(DedupConfig(decontaminate=(text_eval,), decontam_n=12, workers=1))
    assert [doc.location for doc in stage(docs)] == ["doc2"]
    assert stage.stats.notes["contaminated_by"] == {str(text_eval): 2}


def test_decontamination_reads_labelled_jsonl_and_says_what_is_wrong(tmp_path: Path) -> None:
    labelled = _write_jsonl(tmp_path / "sst.jsonl", [{"sentence": _EVAL, "label": 1}])
    ngrams = read_eval_ngrams([labelled], 13, text_field="sentence")
    assert ngrams.texts == 1 and len(ngrams.hashes) == len(_EVAL.split()) - 13 + 1
    with pytest.raises(DataError, match=r"sst\.jsonl:1: expected an object with a \"text\""):
        read_eval_ngrams([labelled], 13)
    with pytest.raises(DataError, match="cannot read the evaluation file"):
        read_eval_ngrams([tmp_path / "missing.jsonl"], 13)
    with pytest.raises(ConfigError, match="--threshold"):
        DedupConfig(threshold=1.5)


def test_clusters_report_kept_and_dropped_locations(tmp_path: Path) -> None:
    rng = random.Random(3)
    base = [" ".join(_sentences(rng, 12)) for _ in range(3)]
    texts = [base[0], base[1], _edited(rng, base[0], 0.03, base[2].split()), base[0], base[2]]
    source = tmp_path / "in.jsonl"
    with CorpusWriter(source) as writer:
        for doc in _docs(texts):
            writer.write(doc)
    out, clusters = tmp_path / "out.jsonl", tmp_path / "clusters.jsonl"
    code = main(
        ["data", "dedup", str(source), "--out", str(out), "--clusters", str(clusters)]
        + ["--workers", "1", "--no-progress"]
    )
    assert code == 0
    assert [doc.location for doc in read_corpus(out)] == ["doc0", "doc1", "doc4"]
    (cluster,) = [json.loads(line) for line in clusters.read_text().splitlines()]
    assert cluster["kept"] == "doc0" and cluster["size"] == 3
    assert [(d["location"], d["kind"]) for d in cluster["dropped"]] == [
        ("doc2", "near"),
        ("doc3", "exact"),
    ]
    assert 0.6 <= cluster["dropped"][0]["similarity"] < 1.0
    (stats,) = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text())
    assert stats["stage"] == "dedup"
    assert stats["rejected"] == {"near duplicate": 1, "exact duplicate": 1}
    assert stats["notes"]["clusters"]["count"] == 1


def test_process_pool_gives_the_same_result_as_one_process() -> None:
    corpus = _planted_corpus(seed=5, originals=120, copies=30, overlaps=0)
    docs = _docs([text for text, _, _ in corpus])
    one = DedupStage(DedupConfig(workers=1, chunksize=16))
    pool = DedupStage(DedupConfig(workers=2, chunksize=16))
    assert list(one(docs)) == list(pool(docs))
    assert one.stats.rejected == pool.stats.rejected
    assert one.stats.rejected["near duplicate"] >= 28


@pytest.mark.e2e
def test_clean_and_dedup_compose_in_a_shell_pipe(tmp_path: Path) -> None:
    rng = random.Random(7)
    paragraph = (
        "The harbour was quiet in the early morning, and the fishing boats had not yet come "
        "back from the banks. An old man sat on the wall with his dog, watching the gulls "
        "circle over the water, and he said that the weather would turn before the evening. "
        "Nobody believed him, because the sky was clear and the wind had dropped to nothing, "
        "but by four o'clock the clouds were low over the hills and the first rain had begun."
    )
    texts = [paragraph, paragraph.replace("old man", "old woman"), "Too short to keep."]
    texts += [
        " ".join(_sentences(rng, 8)) + " The end of the story, and that is all." for _ in "ab"
    ]
    source = tmp_path / "in.jsonl"
    with CorpusWriter(source) as writer:
        for doc in _docs(texts):
            writer.write(doc)
    out = tmp_path / "out.jsonl"
    graft = f"{sys.executable} -m graft data"
    command = (
        f"{graft} clean {source} --out - --workers 1 --no-progress --no-langid "
        f"| {graft} dedup - --out {out} --workers 2 --no-progress"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert [doc.location for doc in read_corpus(out)] == ["doc0", "doc3", "doc4"]
    assert "dedup: 4 docs in, 3 out" in done.stderr
    (stats,) = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text())  # stdin has no stats
    assert stats["rejected"] == {"near duplicate": 1}


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights", "expected"),
    [
        (0.6, 128, (0.2, 0.8), (23, 5)),  # the defaults
        (0.8, 128, (0.5, 0.5), (9, 13)),
        (0.5, 64, (0.5, 0.5), (14, 4)),
        (0.9, 256, (0.2, 0.8), (12, 21)),
        (0.3, 16, (0.2, 0.8), (7, 1)),
    ],
)
def test_lsh_bands_and_rows_are_datasketchs_choice(
    threshold: float, num_perm: int, weights: tuple[float, float], expected: tuple[int, int]
) -> None:
    # The expected pairs are datasketch's MinHashLSH(threshold, num_perm, weights).b and .r.
    assert lsh_params(threshold, num_perm, weights) == expected


def test_key_index_finds_every_value_of_a_key_across_buffer_and_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many small flushes, so entries sit in the buffer and in runs of several sizes, merged
    as they come; repeated keys keep every value, in the order added."""
    monkeypatch.setattr(dedup, "_BUFFER_KEYS", 50)
    rng = np.random.default_rng(0)
    index, reference = dedup._KeyIndex(), dict[int, list[int]]()
    pool = rng.integers(0, 2**64, size=3000, dtype=np.uint64)  # so keys repeat
    for number in range(2000):
        keys = rng.choice(pool, size=7).tolist()
        index.add(keys, number)
        for key in keys:
            reference.setdefault(key, []).append(number)
        if number % 97 == 0:
            query = np.concatenate([rng.choice(pool, size=5), rng.integers(0, 2**64, 2, np.uint64)])
            expected = sorted(v for key in query.tolist() for v in reference.get(key, []))
            assert sorted(index.find(query)) == expected
    assert len(index) == 2000 * 7 and 1 < len(index.runs) < 8
    sizes = [len(keys) for keys, _ in index.runs]
    assert all(a > dedup._RUN_RATIO * b for a, b in itertools.pairwise(sizes))
    for keys, values in index.runs:
        assert np.all(keys[:-1] <= keys[1:])
        same = keys[:-1] == keys[1:]
        assert np.all(values[:-1][same] <= values[1:][same])  # a key may repeat in one add


def test_band_index_candidates_include_datasketchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate datasketch's MinHashLSH finds (the index dedup used before), ours
    finds too (a band-key hash collision may add one, which the signature check rejects)."""
    from datasketch import MinHash, MinHashLSH  # type: ignore[import-untyped]

    monkeypatch.setattr(dedup, "_BUFFER_KEYS", 256)  # runs and merges, not only the buffer
    corpus = _planted_corpus(seed=2, originals=200, copies=60, overlaps=20)
    config = DedupConfig()
    signatures = [minhash_signature(text, config.shingle) for text, _, _ in corpus]
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=(0.2, 0.8))
    ours = dedup._NearIndex(config)
    assert (ours.bands, ours.rows) == (lsh.b, lsh.r)
    template = MinHash(num_perm=config.num_perm, seed=config.seed)
    found = 0
    for number, signature in enumerate(signatures):
        minhash = template.copy()
        minhash.hashvalues = signature
        theirs = set(lsh.query(minhash))
        keys = ours.band_keys(signature)
        assert theirs <= set(ours.keys.find(keys)), number
        found += len(theirs)
        lsh.insert(number, minhash)
        ours.add(signature, keys)
    assert found >= 60


def test_dedup_gives_the_same_result_whatever_the_buffer_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = _planted_corpus(seed=4, originals=150, copies=40, overlaps=10)
    texts = [text for text, _, _ in corpus]
    texts += texts[:20]  # exact duplicates
    results = []
    for buffer in (dedup._BUFFER_KEYS, 64):
        monkeypatch.setattr(dedup, "_BUFFER_KEYS", buffer)
        stage = DedupStage(DedupConfig(workers=1, clusters=True))
        kept = [doc.location for doc in stage(_docs(texts))]
        results.append((kept, stage.stats.rejected, [c.to_json() for c in stage.clusters]))
    assert results[0] == results[1]
    assert results[0][1]["exact duplicate"] == 20 and results[0][1]["near duplicate"] >= 38
