"""Gradient accumulation equals one large batch, also when micro-batches score different counts."""

import torch

from graft.data.records import IGNORE_INDEX
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Batch, LossSum
from graft.objectives.clm import next_token_loss
from graft.train.loop import accumulate_gradients


class NextToken:
    """The loss of every LM-head objective, over batches built here rather than from shards."""

    name = "next_token"

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        return next_token_loss(model, batch)


def grads_after(model: LanguageModel, micro: list[Batch]) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, NextToken(), micro)  # type: ignore[arg-type]
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_four_micro_batches_of_two_equal_one_batch_of_eight():
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=50, max_seq_len=16, d_model=32, n_layers=2, n_heads=4)
    )
    x = torch.randint(0, 50, (8, 16))
    y = torch.randint(0, 50, (8, 16))
    # Padded / masked targets of very different lengths per row, so micro-batches score
    # 2..30 tokens: a per-micro-batch mean would weight their tokens unequally.
    for row, keep in enumerate([16, 1, 9, 3, 16, 14, 2, 5]):
        y[row, keep:] = IGNORE_INDEX
    big = grads_after(model, [Batch(x, y)])
    small = grads_after(model, [Batch(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)])
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=0, atol=1e-6, msg=name)
    # A per-micro-batch mean (the common mistake) is measurably different: the test can fail.
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        out = next_token_loss(model, Batch(x[i : i + 2], y[i : i + 2]))
        (out.total / out.count / 4).backward()
    wrong = {n: p.grad for n, p in model.named_parameters()}
    assert max((wrong[n] - big[n]).abs().max().item() for n in big) > 1e-4
