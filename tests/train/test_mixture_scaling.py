"""Mixtures and replay train with the configured weights and the plain objective's scale: the loop
divides by the units each batch declares, and every loss must count exactly those."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft.data.shards import TokenShards, prepare_shards
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Batch, LossSum, Objective
from graft.objectives.clm import CausalLM
from graft.objectives.denoise import Denoise
from graft.objectives.mix import Mixture, with_replay
from graft.train.loop import accumulate_gradients

SEQ = 32


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, text_corpus: Path
) -> tuple[Tokenizer, TokenShards, TokenShards]:
    tokenizer = bytes_tokenizer(sentinels=8)
    out = tmp_path_factory.mktemp("mixture_scaling") / "data"
    prepare_shards([text_corpus], tokenizer, out, progress=False)
    return tokenizer, TokenShards.open(out, "train"), TokenShards.open(out, "val")


def _model(tokenizer: Tokenizer) -> LanguageModel:
    torch.manual_seed(0)
    config = preset(
        "nano", vocab_size=tokenizer.vocab_size, max_seq_len=SEQ, d_model=32, n_layers=1, n_heads=2
    )
    return LanguageModel(config).double()


def _grads(model: LanguageModel, objective: Objective, micro: list[Batch]) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, objective, micro)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _plain(batch: Batch) -> Batch:
    """The batch as its part built it, before the mixture tagged it."""
    return replace(batch, part="", units_are_rows=False)


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_a_one_part_mixture_gives_the_plain_objectives_gradients(prepared) -> None:
    tokenizer, train, val = prepared
    model = _model(tokenizer)
    for plain in (
        CausalLM(train, val, SEQ),
        Denoise(train, val, SEQ, tokenizer),  # scores a different number of targets per batch
    ):
        mix = Mixture({plain.name: (plain, 1.0)})
        g = torch.Generator().manual_seed(3)
        micro = [mix.train_batch(4, g)]
        assert micro[0].units == 4  # rows, not the targets its part scored
        _assert_same(_grads(model, mix, micro), _grads(model, plain, [_plain(micro[0])]))


def test_self_replay_gives_the_plain_objectives_gradients_under_accumulation(prepared) -> None:
    tokenizer, train, val = prepared
    model = _model(tokenizer)
    plain = CausalLM(train, val, SEQ)
    replay = with_replay(CausalLM(train, val, SEQ), CausalLM(train, val, SEQ), 0.5)
    g = torch.Generator().manual_seed(5)
    micro = [replay.train_batch(4, g) for _ in range(4)]
    assert {b.part for b in micro} == {"domain", "general"}  # this seed draws both
    _assert_same(_grads(model, replay, micro), _grads(model, plain, [_plain(b) for b in micro]))


def test_each_part_of_a_mixture_keeps_its_own_scale(prepared) -> None:
    """Inside a clm+denoise mix, a denoise batch moves the weights as much as it does alone (it
    was about 5x too much, and clm 1/T too little, when the loop divided a mean by targets)."""
    tokenizer, train, val = prepared
    model = _model(tokenizer)
    parts = {"clm": CausalLM(train, val, SEQ), "denoise": Denoise(train, val, SEQ, tokenizer)}
    mix = Mixture({name: (objective, 1.0) for name, objective in parts.items()})
    g = torch.Generator().manual_seed(0)
    seen = set()
    while seen != set(parts):
        batch = mix.train_batch(4, g)
        name = batch.part
        seen.add(name)
        _assert_same(_grads(model, mix, [batch]), _grads(model, parts[name], [_plain(batch)]))


class _Miscounting:
    """An objective whose loss reports a count other than its batch's units."""

    name = "miscounting"

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        logits = model(batch.input_ids).logits
        return LossSum(logits.float().mean() * batch.units, batch.units + 1)


def test_the_loop_refuses_a_loss_that_counts_other_units_than_its_batch(prepared) -> None:
    tokenizer, train, val = prepared
    model = _model(tokenizer)
    batch = CausalLM(train, val, SEQ).train_batch(2, torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match="a loss counts 65 units, but its batch declares 64"):
        accumulate_gradients(model, _Miscounting(), [batch])  # type: ignore[arg-type]
