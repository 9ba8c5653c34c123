"""A served encoder sees exactly what it was trained and evaluated on: texts framed as
`[CLS] text [SEP]` by the one text -> model-input function (graft.data.inputs). Served classifier
probabilities equal `graft eval`'s; served embeddings of an imported BERT equal transformers'
BertModel with masked mean pooling over the tokens its own tokenizer frames; and training's,
evaluation's and serving's ids for the same text are identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from fastapi.testclient import TestClient

from graft.checkpoint import load_model, save_checkpoint
from graft.data.records import TextRecord
from graft.data.tagged import TaggedSentence
from graft.data.tokenizer import Tokenizer
from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.classify import Classify
from graft.objectives.tokens import TagTokens
from graft.serve.encodings import input_ids

from .conftest import CONTEXT, build

LABELS = ("ham", "spam")
TEXTS = [
    "the quick brown fox",
    "buy now",
    "hello world, the serve of the day is here",
    "a",
]


def encoder_classifier(tokenizer: Tokenizer, seed: int = 0) -> LanguageModel:
    """A tiny random BERT-style sequence classifier: it reads the pooled first token, so a text
    served without its [CLS] gives different probabilities."""
    torch.manual_seed(seed)
    config = preset(
        "bert-nano",
        vocab_size=tokenizer.vocab_size,
        max_seq_len=CONTEXT,
        d_model=32,
        n_layers=2,
        n_heads=2,
        init_std=0.3,
        nsp_head=False,
        mlm_head=False,
        head="sequence",
        labels=LABELS,
    )
    return LanguageModel(config).eval()


def test_served_classifier_probabilities_equal_graft_eval(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = encoder_classifier(tokenizer)
    checkpoint = save_checkpoint(
        tmp_path / "ckpt", model=model, tokenizer=tokenizer, run_config_yaml="{}\n"
    )
    data = tmp_path / "texts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": LABELS[i % 2]}) + "\n" for i, t in enumerate(TEXTS)
        ),
        encoding="utf-8",
    )
    report = evaluate_checkpoint(
        EvalOptions(
            checkpoint=checkpoint,
            task="classify",
            data=(data,),
            out_dir=tmp_path / "eval",
            batch_size=3,  # a padded batch and a batch of one
            samples=len(TEXTS),
        )
    )
    rows = [
        json.loads(line)
        for line in (report.parent / "classify_samples.jsonl").read_text().splitlines()
    ]
    assert [r["text"] for r in rows][: len(TEXTS)] == TEXTS

    served_model, served_tokenizer = load_model(checkpoint)
    served = build(served_tokenizer, served_model, start=False)
    with TestClient(served.app) as client:
        response = client.post("/v1/classify", json={"input": TEXTS})
    assert response.status_code == 200, response.text
    data_out = response.json()["data"]
    for row, item in zip(rows, data_out):
        assert item["label"] == row["predicted"], (row["text"], item, row)
        # The report keeps six decimals of the predicted label's probability.
        assert abs(item["probabilities"][row["predicted"]] - row["probability"]) <= 1e-5, (
            row["text"],
            item,
            row,
        )


def test_served_classifier_probability_vectors_equal_the_eval_prediction(
    tokenizer: Tokenizer,
) -> None:
    """Every label's probability, not only the top one's, through the function graft eval uses."""
    from graft.evaluate.predict import class_probabilities

    model = encoder_classifier(tokenizer, seed=1)
    expected = class_probabilities(
        model, tokenizer, TEXTS, max_len=CONTEXT, batch_size=3
    ).probabilities
    served = build(tokenizer, model, start=False)
    with TestClient(served.app) as client:
        data_out = client.post("/v1/classify", json={"input": TEXTS}).json()["data"]
    got = torch.tensor([[item["probabilities"][label] for label in LABELS] for item in data_out])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_training_evaluation_and_serving_frame_a_text_identically(tokenizer: Tokenizer) -> None:
    """The two uses agree: the ids fine-tuning (and graft eval) feed a classifier and a tagger
    equal the ids the server feeds the same model for the same text."""
    model = encoder_classifier(tokenizer)
    info = build(tokenizer, model, start=False).info
    records = [TextRecord(t, LABELS[i % 2], f"t:{i}") for i, t in enumerate(TEXTS)]
    trained = Classify(records, records, tokenizer, LABELS, CONTEXT, bidirectional=True)
    served = input_ids(TEXTS, tokenizer, info)
    assert trained.train.ids == served
    assert trained.val.ids == served
    assert all(ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id for ids in served)
    # Token tagging frames the same way (its words are joined by single spaces).
    sentences = [
        TaggedSentence(tuple(t.split()), ("O",) * len(t.split()), f"s:{i}")
        for i, t in enumerate(TEXTS)
    ]
    tagger = TagTokens(sentences, sentences, tokenizer, ("O", "B-X"), CONTEXT, bidirectional=True)
    assert tagger.val.ids == input_ids([" ".join(s.words) for s in sentences], tokenizer, info)


# -- an imported BERT against transformers -------------------------------------------------------

BERT_VOCAB = list(
    dict.fromkeys(
        [
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
            *"!,.?'",
            *"abcdefghijklmnopqrstuvwxyz",
            *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
            "the",
            "quick",
            "brown",
            "fox",
            "hello",
            "world",
            "buy",
            "now",
            "serve",
            "##s",
            "day",
            "is",
            "here",
        ]
    )
)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers BertModel with a WordPiece tokenizer, saved as transformers
    saves them (nothing downloaded)."""
    directory = tmp_path_factory.mktemp("bert")
    vocab = directory / "vocab_source.txt"
    vocab.write_text("".join(token + "\n" for token in BERT_VOCAB), encoding="utf-8")
    slow = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    slow(vocab_file=str(vocab), do_lower_case=True).save_pretrained(directory)
    vocab.unlink()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero biases and unit norms are exercised too
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(directory)
    return directory


def test_served_embeddings_of_an_imported_bert_equal_transformers_mean_pooling(
    bert_dir: Path,
) -> None:
    model, tokenizer = load_model(bert_dir)
    served = build(tokenizer, model, start=False)
    texts = ["The quick brown fox!", "hello world", "buy now, serve the day is here.", "a"]
    with TestClient(served.app) as client:
        response = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    got = torch.tensor([item["embedding"] for item in response.json()["data"]])

    reference = transformers.BertModel.from_pretrained(bert_dir).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")  # [CLS] text [SEP]
    with torch.no_grad():
        hidden = reference(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].to(hidden.dtype)
    expected = (hidden * mask).sum(1) / mask.sum(1)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert bool((cosine >= 0.9999).all()), cosine
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # Usage counts the tokens the model read, [CLS] and [SEP] included.
    assert response.json()["usage"]["prompt_tokens"] == int(encoded["attention_mask"].sum())
