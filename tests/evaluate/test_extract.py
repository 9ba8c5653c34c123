"""`graft extract` against `graft eval --task tokens`: a tiny tagger fine-tuned by graft on a slice
of CoNLL-2003 finds in CoNLL test sentences, given as plain text, exactly the entities the evaluator
scores, so the F1 of its output equals the F1 eval reports. Also: character offsets, documents
with no entities, .txt inputs, and long documents read in windows of whole sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graft.checkpoint import load_model, save_checkpoint
from graft.cli import main
from graft.data.corpus import CorpusDoc, CorpusWriter, text_sha256
from graft.data.tagged import TaggedSentence, read_tagged, word_token_counts
from graft.data.tokenizer import train_tokenizer
from graft.evaluate.extract import split_words
from graft.model.config import preset
from graft.model.transformer import LanguageModel

CONLL = Path(__file__).resolve().parents[3] / "shared" / "data" / "conll2003"
TEST_SENTENCES = 200

needs_conll = pytest.mark.skipif(
    not (CONLL / "train.txt").is_file() or not (CONLL / "test.txt").is_file(),
    reason=f"shared dataset conll2003 not found under {CONLL.parent}",
)


def write_conll(path: Path, sentences: list[TaggedSentence]) -> Path:
    lines = ["".join(f"{w} {t}\n" for w, t in zip(s.words, s.tags)) for s in sentences]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer encoder (d_model 32, a BPE tokenizer trained here) fine-tuned by `graft finetune
    tokens` for 80 steps on 900 CoNLL training sentences (read at test time, never kept in the
    repository): weak (entity F1 about 0.27 on the test sentences), but it finds entities."""
    root = tmp_path_factory.mktemp("extract")
    train = read_tagged(CONLL / "train.txt")[0][:1000]
    tokenizer = train_tokenizer((" ".join(s.words) for s in train), "bpe", 2000, min_frequency=1)
    torch.manual_seed(0)
    model = LanguageModel(
        preset(
            "bert-nano",
            vocab_size=tokenizer.vocab_size,
            max_seq_len=256,  # no test sentence is cut: eval would tag its tail "O"
            d_model=32,
            n_layers=2,
            n_heads=2,
            mlm_head=False,
            nsp_head=False,
            pooler=False,
        )
    )
    base = save_checkpoint(root / "base", model=model, tokenizer=tokenizer, run_config_yaml="{}")
    args = ["finetune", "tokens", "--init", str(base), "--out", str(root / "run")]
    args += ["--train", str(write_conll(root / "train.txt", train[:900]))]
    args += ["--val", str(write_conll(root / "val.txt", train[900:]))]
    args += ["--train.max_steps=80", "--train.eval_every=80", "--train.batch_size=32"]
    args += ["--train.progress=false", "--optim.lr=3e-3", "--optim.warmup_steps=5"]
    assert main(args) == 0
    return root / "run" / "checkpoints" / "last"


@pytest.fixture(scope="module")
def test_sentences() -> list[TaggedSentence]:
    return read_tagged(CONLL / "test.txt")[0][:TEST_SENTENCES]


def write_docs(path: Path, texts: list[str]) -> Path:
    with CorpusWriter(path) as writer:
        for i, text in enumerate(texts):
            writer.write(CorpusDoc(text=text, source="conll", location=f"test:{i}"))
    return path


def extract(checkpoint: Path, docs: list[Path], out: Path, *more: str) -> list[dict]:
    args = ["extract", str(checkpoint), *map(str, docs), "--out", str(out), "--no-progress"]
    assert main([*args, *more]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def spans(tags: tuple[str, ...] | list[str]) -> set[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return {(kind, first, last) for kind, first, last in get_entities(list(tags))}


@needs_conll
def test_f1_of_extracted_entities_equals_what_eval_reports(
    tagger: Path, test_sentences: list[TaggedSentence], tmp_path: Path
) -> None:
    conll = write_conll(tmp_path / "test.txt", test_sentences)
    out = tmp_path / "eval"
    args = ["eval", str(tagger), "--task", "tokens", "--data", str(conll), "--out", str(out)]
    assert main(args) == 0
    reported = json.loads((out / "tokens.json").read_text(encoding="utf-8"))
    assert reported["count"] == TEST_SENTENCES and reported["truncated"] == 0

    texts = [" ".join(s.words) for s in test_sentences]
    entities = extract(tagger, [write_docs(tmp_path / "docs.jsonl", texts)], tmp_path / "e.jsonl")
    found: dict[str, set[tuple[str, int, int]]] = {}
    for entity in entities:
        text = texts[int(entity["doc"].removeprefix("test:"))]
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["source"] == "conll" and entity["doc_sha256"] == text_sha256(text)
        assert 0.0 < entity["score"] <= 1.0
        # Character offsets back to word positions: the words are joined by single spaces.
        first = text[: entity["start"]].count(" ")
        last = first + entity["text"].count(" ")
        found.setdefault(entity["doc"], set()).add((entity["label"], first, last))

    gold = [spans(s.tags) for s in test_sentences]
    predicted = [found.get(f"test:{i}", set()) for i in range(len(texts))]
    correct = sum(len(g & p) for g, p in zip(gold, predicted))
    precision = correct / sum(map(len, predicted))
    recall = correct / sum(map(len, gold))
    f1 = 2 * precision * recall / (precision + recall)
    print(f"entity F1: extract {f1:.6f}, eval {reported['f1']:.6f} ({len(entities)} entities)")
    assert f1 > 0.05  # the model finds entities, so the equality below means something
    assert precision == pytest.approx(reported["precision"], abs=1e-9)
    assert recall == pytest.approx(reported["recall"], abs=1e-9)
    assert f1 == pytest.approx(reported["f1"], abs=1e-9)


@needs_conll
def test_offsets_empty_documents_and_txt_files(
    tagger: Path, test_sentences: list[TaggedSentence], tmp_path: Path
) -> None:
    sentence = " ".join(test_sentences[1].words)
    # Raw text: its own line breaks and spacing, punctuation attached to words.
    raw = "  " + sentence.replace(" , ", ", ").replace(" .", ".").replace(" ", "\n", 1) + "\n"
    texts = ["", "   \n\t ", raw]
    (tmp_path / "one.txt").write_text(sentence, encoding="utf-8")
    docs = [write_docs(tmp_path / "docs.jsonl", texts), tmp_path / "one.txt"]
    entities = extract(tagger, docs, tmp_path / "e.jsonl")
    assert entities, "the sentence has entities the model finds"
    by_doc: dict[str, list[dict]] = {}
    for entity in entities:
        by_doc.setdefault(entity["doc"], []).append(entity)
    assert set(by_doc) <= {"test:2", str(tmp_path / "one.txt")}  # the empty ones found nothing
    for entity in by_doc.get("test:2", []):
        assert raw[entity["start"] : entity["end"]] == entity["text"]
        assert entity["text"] == entity["text"].strip()
    one = by_doc[str(tmp_path / "one.txt")]
    assert {e["source"] for e in one} == {"txt"}
    assert all(sentence[e["start"] : e["end"]] == e["text"] for e in one)


@needs_conll
def test_a_long_document_is_read_in_windows_of_whole_sentences(
    tagger: Path, test_sentences: list[TaggedSentence], tmp_path: Path
) -> None:
    _, tokenizer = load_model(tagger)
    # Two sentences ending in "." that fit the context alone but not together.
    ends = [s for s in test_sentences if s.words[-1] == "." and len(s.words) > 8]
    a, b = (" ".join(s.words) for s in ends[:2])
    size = max(sum(word_token_counts(tokenizer, s.split())) for s in (a, b))
    seq_len = str(size + 4)  # [CLS], [SEP] and room for a word's leading space inside the doc
    docs = write_docs(tmp_path / "docs.jsonl", [a, b, f"{a} {b}"])
    entities = extract(tagger, [docs], tmp_path / "e.jsonl", "--seq-len", seq_len)
    second = {(label, text, start + len(a) + 1) for label, text, start in _of(entities, "test:1")}
    assert _of(entities, "test:2") == _of(entities, "test:0") | second
    assert _of(entities, "test:2"), "the sentences have entities the model finds"


def _of(entities: list[dict], doc: str) -> set[tuple[str, str, int]]:
    return {(e["label"], e["text"], e["start"]) for e in entities if e["doc"] == doc}


def test_words_and_their_offsets() -> None:
    text = "He said: \"John's car (a Ford) is in the U.S. now.\" Mr. Smith didn't..."
    words = split_words(text)
    assert [w.text for w in words] == [
        *("He", "said", ":", '"', "John", "'s", "car", "(", "a", "Ford", ")", "is", "in"),
        *("the", "U.S.", "now", ".", '"', "Mr.", "Smith", "did", "n't", "..."),
    ]
    assert all(text[w.start : w.end] == w.text for w in words)
    conll = "3. Pat O'Neill ( U.S. ) -- 1996 f... 12.177)."
    assert [w.text for w in split_words(conll)] == conll.split()


def test_refuses_a_model_without_a_token_head_and_missing_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = train_tokenizer([], "bytes", 0)
    model = LanguageModel(preset("nano", vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1))
    lm = save_checkpoint(tmp_path / "lm", model=model, tokenizer=tokenizer, run_config_yaml="{}")
    docs = write_docs(tmp_path / "docs.jsonl", ["Paris"])
    assert main(["extract", str(lm), str(docs), "--out", str(tmp_path / "e.jsonl")]) == 2
    assert "needs a 'token' head" in capsys.readouterr().err
    missing = tmp_path / "nothing.jsonl"
    assert main(["extract", str(lm), str(missing), "--out", str(tmp_path / "e.jsonl")]) == 2
    assert f"{missing}: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()


@needs_conll
def test_eval_and_extract_refuse_a_seq_len_past_the_context_alike(
    tagger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One rule (evaluate.predict.scoring_context) for both commands, once written twice."""
    seq_len = "257"
    docs = write_docs(tmp_path / "d.jsonl", ["EU rejects German call"])
    conll = write_conll(tmp_path / "t.txt", read_tagged(CONLL / "test.txt")[0][:2])
    out = str(tmp_path / "o")
    commands = [
        ["extract", str(tagger), str(docs), "--out", out + ".jsonl"],
        ["eval", str(tagger), "--task", "tokens", "--data", str(conll), "--out", out],
    ]
    for args in commands:
        assert main([*args, "--seq-len", seq_len]) == 2
        error = capsys.readouterr().err
        assert f"--seq-len {seq_len}: give 1 to " in error and "context of 256 tokens" in error
