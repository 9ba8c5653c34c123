"""The objective classes over real prepared shards: the batches they build (framing, segment ids,
masks, scored positions), their refusals, their losses and metrics, and mixtures."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.data.records import IGNORE_INDEX
from graft.data.shards import TokenShards, prepare_shards
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.errors import ConfigError, DataError, TokenizerError
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.base import Shards
from graft.objectives.batch import Batch
from graft.objectives.clm import CLMConfig
from graft.objectives.denoise import Denoise
from graft.objectives.mix import MixConfig, Mixture, with_replay
from graft.objectives.mlm import MaskedLM
from graft.objectives.nsp import NextSentence
from graft.objectives.spans import restore_spans
from graft.train.loop import accumulate_gradients, evaluate

SEQ = 32


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, text_corpus: Path
) -> tuple[Tokenizer, TokenShards, TokenShards]:
    tokenizer = bytes_tokenizer(sentinels=8)
    out = tmp_path_factory.mktemp("objectives") / "data"
    prepare_shards([text_corpus], tokenizer, out, progress=False)
    return tokenizer, TokenShards.open(out, "train"), TokenShards.open(out, "val")


def encoder(tokenizer: Tokenizer) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(
        preset(
            "bert-nano",
            vocab_size=tokenizer.vocab_size,
            max_seq_len=SEQ,
            d_model=32,
            n_layers=1,
            n_heads=2,
        )
    )


def decoder(tokenizer: Tokenizer) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(
        preset(
            "nano",
            vocab_size=tokenizer.vocab_size,
            max_seq_len=SEQ,
            d_model=32,
            n_layers=1,
            n_heads=2,
        )
    )


def test_mlm_frames_windows_and_scores_only_masked_positions(prepared) -> None:
    tokenizer, train, val = prepared
    objective = MaskedLM(train, val, SEQ, tokenizer, tokenizer.vocab_size)
    batch = objective.train_batch(64, torch.Generator().manual_seed(1))
    assert batch.input_ids.shape == (64, SEQ) and batch.causal is False
    assert (batch.input_ids[:, 0] == tokenizer.cls_id).all() and (
        batch.input_ids[:, -1] == tokenizer.sep_id
    ).all()
    scored = batch.targets != IGNORE_INDEX
    assert 0.08 < scored.float().mean() < 0.22  # 15% of the maskable tokens
    specials = torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.eot_id])
    assert not torch.isin(
        batch.targets[scored], specials
    ).any()  # framing and separators never chosen
    model = encoder(tokenizer)
    out = objective.loss(model, batch)
    assert out.count == int(scored.sum()) and out.stats["mlm_count"] == out.count
    out.total.backward()
    assert model.lm_head_transform.dense.weight.grad is not None


def test_mlm_eval_batches_are_fixed_and_report_the_unigram_baseline(prepared) -> None:
    tokenizer, train, val = prepared
    objective = MaskedLM(train, val, SEQ, tokenizer, tokenizer.vocab_size)
    first, again = objective.eval_batches(4, 2), objective.eval_batches(4, 2)
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first, again))
    metrics = evaluate(encoder(tokenizer), objective, first, torch.device("cpu"))
    assert {"val/loss", "val/mlm_acc", "val/mlm_unigram_acc"} <= set(metrics)
    counts = np.bincount(np.asarray(val.tokens), minlength=tokenizer.vocab_size)
    counts[[tokenizer.eot_id]] = 0
    assert metrics["val/mlm_unigram_acc"] == pytest.approx(counts.max() / counts.sum())


def test_mlm_is_refused_without_a_mask_token(prepared, tmp_path: Path) -> None:
    _, train, val = prepared
    backend = bytes_tokenizer().backend
    no_mask = Tokenizer.load(_without_token(backend, "<|mask|>", tmp_path))
    with pytest.raises(TokenizerError, match="needs the tokenizer's mask token"):
        MaskedLM(train, val, SEQ, no_mask, no_mask.vocab_size)


def _without_token(backend, token: str, directory: Path) -> Path:
    import json

    data = json.loads(backend.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != token]
    (directory / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return directory


def test_nsp_pairs_carry_segments_padding_and_labels(prepared) -> None:
    tokenizer, train, val = prepared
    objective = NextSentence(train, val, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=True)
    batch = objective.train_batch(200, torch.Generator().manual_seed(3))
    assert batch.token_type_ids is not None and batch.sequence_targets is not None
    assert (batch.input_ids[:, 0] == tokenizer.cls_id).all()
    assert set(batch.token_type_ids.unique().tolist()) == {0, 1}
    assert 0.35 < batch.sequence_targets.float().mean() < 0.65
    assert batch.attention_mask.shape == (200, 1, 1, SEQ)
    real = batch.attention_mask[:, 0, 0]
    assert not (batch.targets[~real] != IGNORE_INDEX).any()  # padding is never masked
    model = encoder(tokenizer)
    out = objective.loss(model, batch)
    # BERT's loss: the two means added, the masked tokens' over their count, the pairs' per row.
    mlm_mean = out.stats["mlm_loss_sum"] / out.stats["mlm_count"]
    nsp_mean = out.stats["nsp_loss_sum"] / out.stats["nsp_count"]
    assert out.per_row is not None and out.stats["nsp_count"] == batch.rows
    together = float(out.total.detach()) / out.count + float(out.per_row.detach()) / batch.rows
    assert together == pytest.approx(mlm_mean + nsp_mean, rel=1e-5)
    metrics = evaluate(model, objective, objective.eval_batches(8, 2), torch.device("cpu"))
    assert metrics["val/loss"] == pytest.approx(metrics["val/mlm_loss"] + metrics["val/nsp_loss"])
    assert 0.0 <= metrics["val/nsp_acc"] <= 1.0


def test_mlm_nsp_accumulation_equals_one_batch_however_the_masks_fall(prepared) -> None:
    """BERT's sum of two means under accumulation: micro-batches mask different numbers of
    tokens, and NSP's weight must not follow each one's masked-token count (it did: a
    micro-batch with few masks barely trained the NSP head)."""
    tokenizer, train, val = prepared
    objective = NextSentence(train, val, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=True)
    batch = objective.train_batch(8, torch.Generator().manual_seed(5))
    assert batch.targets is not None
    keep = torch.zeros_like(batch.targets, dtype=torch.bool)
    keep[:2, :] = True  # the first two rows keep every mask, the others one each
    keep[2:, :] = torch.arange(SEQ) == (batch.targets[2:] != IGNORE_INDEX).int().argmax(1)[:, None]
    batch = replace(batch, targets=batch.targets.where(keep, IGNORE_INDEX))

    def part(rows: slice) -> Batch:
        cut = {
            f.name: getattr(batch, f.name)[rows]
            for f in fields(batch)
            if isinstance(getattr(batch, f.name), torch.Tensor)
        }
        return replace(batch, **cut)

    def grads(micro: list[Batch]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, objective, micro)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model = encoder(tokenizer).double()
    whole = grads([batch])
    split = grads([part(slice(0, 2)), part(slice(2, 8))])
    assert split[0].shape == whole[0].shape and len(split) == len(whole)
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_nsp_labels_follow_bert_for_pretraining_zero_means_b_follows_a(prepared) -> None:
    import numpy as np

    tokenizer, train, _ = prepared
    objective = NextSentence(train, None, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=False)
    batch = objective.train_batch(64, torch.Generator().manual_seed(4))
    stream = np.asarray(train.tokens).tolist()
    text = ",".join(map(str, stream))
    for ids, types, real, label in zip(
        batch.input_ids, batch.token_type_ids, batch.attention_mask[:, 0, 0], batch.sequence_targets
    ):
        ids, types = ids[real].tolist(), types[real].tolist()
        first, second = ids[1 : types.index(1) - 1], ids[types.index(1) : -1]
        contiguous = ("," + ",".join(map(str, first + second)) + ",") in ("," + text + ",")
        assert contiguous == (int(label) == 0), (
            "label 0 must mean: B directly follows A in one document"
        )
    assert 0 < int(batch.sequence_targets.sum()) < 64


def test_nsp_refuses_a_split_with_one_document(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one document only. " * 200, encoding="utf-8")
    (tmp_path / "b.txt").write_text("another one here. " * 200, encoding="utf-8")
    tokenizer = bytes_tokenizer()
    prepare_shards(
        [tmp_path / "a.txt"],
        tokenizer,
        tmp_path / "data",
        val_inputs=[tmp_path / "b.txt"],
        progress=False,
    )
    train, val = (
        TokenShards.open(tmp_path / "data", "train"),
        TokenShards.open(tmp_path / "data", "val"),
    )
    with pytest.raises(DataError, match="needs at least two documents in the train split"):
        NextSentence(train, val, SEQ, tokenizer, tokenizer.vocab_size, with_mlm=False)


@pytest.mark.parametrize("style", ["t5", "bart"])
def test_denoise_targets_are_the_lost_text_and_only_they_are_scored(prepared, style: str) -> None:
    tokenizer, train, val = prepared
    objective = Denoise(train, val, SEQ, tokenizer, style=style)
    generator = torch.Generator().manual_seed(5)
    starts = [0, 100, 333]
    batch = objective._batch(train, starts, generator)
    for row, start in enumerate(starts):
        original = train.tokens[start : start + objective.window].astype(np.int64)
        scored = (batch.targets[row] != IGNORE_INDEX).nonzero().squeeze(1)
        first, last = int(scored[0]), int(scored[-1])
        assert scored.tolist() == list(range(first, last + 1))  # one contiguous target part
        prefix = batch.input_ids[
            row, : first + 1
        ].numpy()  # the corrupted input (+ separator for bart)
        target = batch.targets[row, first : last + 1].numpy()
        if style == "t5":
            assert np.array_equal(restore_spans(prefix, target, tokenizer.sentinel_ids), original)
        else:
            assert np.array_equal(target, original) and prefix[-1] == tokenizer.sep_id
    out = objective.loss(decoder(tokenizer), batch)
    assert out.count == int((batch.targets != IGNORE_INDEX).sum())


def test_denoise_t5_is_refused_without_sentinels(prepared) -> None:
    _, train, val = prepared
    with pytest.raises(TokenizerError, match="--sentinels"):
        Denoise(train, val, SEQ, bytes_tokenizer(), style="t5")


def test_prefix_lm_denoise_attends_both_ways_over_the_corrupted_input(prepared) -> None:
    tokenizer, train, val = prepared
    objective = Denoise(train, val, SEQ, tokenizer, style="t5", prefix_lm=True)
    batch = objective.train_batch(2, torch.Generator().manual_seed(0))
    first_target = int((batch.targets[0] != IGNORE_INDEX).nonzero()[0])
    mask = batch.attention_mask[0, 0]
    assert mask[0, first_target]  # the first prefix token sees the last prefix token
    assert not mask[0, first_target + 1]  # but never the target


def test_mixture_samples_by_weight_and_logs_each_part(prepared) -> None:
    tokenizer, train, val = prepared
    cfg = MixConfig(mix={"clm": 3.0, "denoise": 1.0})
    objective = cfg.build(Shards(train, val, SEQ, tokenizer, tokenizer.vocab_size))
    generator = torch.Generator().manual_seed(0)
    parts = [objective.train_batch(1, generator).part for _ in range(2000)]
    assert parts.count("clm") / len(parts) == pytest.approx(0.75, abs=0.03)
    metrics = evaluate(
        decoder(tokenizer), objective, objective.eval_batches(2, 2), torch.device("cpu")
    )
    assert {"val/loss", "val/clm/loss", "val/denoise/loss"} <= set(metrics)
    assert metrics["val/loss"] == pytest.approx(
        0.75 * metrics["val/clm/loss"] + 0.25 * metrics["val/denoise/loss"]
    )


def test_mixture_weights_must_sum_to_a_positive_number(prepared) -> None:
    tokenizer, train, val = prepared
    clm = CLMConfig().build(Shards(train, val, SEQ, tokenizer, tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="sum to a positive number"):
        Mixture({"a": (clm, 0.0), "b": (clm, 0.0)})


def test_replay_scores_both_validation_sets_and_follows_the_domain(prepared) -> None:
    tokenizer, train, val = prepared

    def make():
        return CLMConfig().build(Shards(train, val, SEQ, tokenizer, tokenizer.vocab_size))

    objective = with_replay(make(), make(), 0.0)
    parts = {objective.train_batch(1, torch.Generator().manual_seed(i)).part for i in range(50)}
    assert parts == {"domain"}  # fraction 0: never sampled...
    metrics = evaluate(
        decoder(tokenizer), objective, objective.eval_batches(2, 1), torch.device("cpu")
    )
    assert (
        metrics["val/loss"] == metrics["val/domain/loss"] and "val/general/loss" in metrics
    )  # ...still scored
