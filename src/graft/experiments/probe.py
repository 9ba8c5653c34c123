"""The linear probe: how linearly separable a frozen model's sequence features are.

`sequence_features` runs a frozen backbone over token sequences and pools each one to a single
vector; `linear_probe` standardises those vectors and fits a multinomial logistic regression on
them, reporting held-out accuracy. A probe trains nothing in the model, so it measures what
pre-training put into the features rather than what fine-tuning could add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from graft.errors import ConfigError, DataError
from graft.model.transformer import LanguageModel, mean_pool, read_padded

__all__ = ["Pooling", "ProbeResult", "linear_probe", "sequence_features"]

Pooling = Literal["mean", "last", "first"]
_POOLINGS: tuple[str, ...] = ("mean", "last", "first")


def _pool(hidden: torch.Tensor, real: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C), reading real tokens only."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "last":
        last = real.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return mean_pool(hidden, real)


@torch.no_grad()
def sequence_features(
    model: LanguageModel,
    input_ids: list[list[int]],
    *,
    batch_size: int = 32,
    max_len: int,
    pooling: Pooling = "mean",
) -> torch.Tensor:
    """One pooled feature vector per sequence: a float32 CPU tensor (N, C), in input order.

    Sequences longer than `max_len` keep their first `max_len` tokens. `pooling` is the mean of
    the final hidden states over real tokens, the last real token's state, or the first token's.
    The model is read where it is (`read_padded`), in eval mode; its mode is restored after.
    """
    if pooling not in _POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    limit = model.config.max_seq_len
    if not 1 <= max_len <= limit:
        raise ConfigError(
            f"max_len must be between 1 and the model's max_seq_len {limit}, got {max_len}"
        )
    for i, seq in enumerate(input_ids):
        if not seq:
            raise DataError(
                f"input_ids[{i}]: empty sequence; every sequence needs at least one token"
            )
    # Batching sequences of similar length keeps padding (wasted compute) small.
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    features = torch.empty(len(input_ids), model.config.d_model, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out, real = read_padded(model, [input_ids[i][:max_len] for i in rows], [])
            features[rows] = _pool(out.hidden, real, pooling).float().cpu()
    finally:
        model.train(was_training)
    return features


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's outcome: accuracy on held-out and on training features."""

    accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    labels: tuple[str, ...]


def _check_split(name: str, x: torch.Tensor, y: torch.Tensor, n_labels: int) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: expected features (N, C) and labels (N,) with N >= 1, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.min() < 0 or y.max() >= n_labels:
        raise ValueError(f"{name}: labels must be integer class indices in 0..{n_labels - 1}")


def _accuracy(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).double().mean().item()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    labels: tuple[str, ...],
    weight_decay: float = 1e-3,
    steps: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Fit multinomial logistic regression on (train_x, train_y); report accuracy on the test set.

    `train_y`/`test_y` hold indices into `labels`. Features are standardised with the training
    set's mean and standard deviation. The fit is full-batch L-BFGS for up to `steps`
    iterations on cross-entropy plus `weight_decay / 2 * ||W||^2` (the bias is not penalised):
    the objective is convex, so L-BFGS converges reliably where a learning rate would need
    tuning, and the penalty keeps separable data from driving the weights to infinity.
    """
    if len(labels) < 2:
        raise ConfigError(f"a probe needs at least 2 labels, got {len(labels)}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    _check_split("train", train_x, train_y, len(labels))
    _check_split("test", test_x, test_y, len(labels))
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have {train_x.shape[1]} columns, test {test_x.shape[1]}")
    # Double precision: L-BFGS's line search stalls early on float32 rounding.
    train_x, test_x = train_x.double().cpu(), test_x.double().cpu()
    train_y, test_y = train_y.long().cpu(), test_y.long().cpu()
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False)
    # A constant feature carries nothing; dividing by ~0 would only amplify noise in the test set.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    probe = nn.Linear(train_x.shape[1], len(labels)).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probe.weight.copy_(
            torch.randn(probe.weight.shape, generator=generator, dtype=torch.float64) * 0.01
        )
        probe.bias.zero_()
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = 0.5 * weight_decay * probe.weight.square().sum()
        loss = F.cross_entropy(probe(train_x), train_y) + penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        accuracy = _accuracy(probe, test_x, test_y)
        train_accuracy = _accuracy(probe, train_x, train_y)
    return ProbeResult(accuracy, train_accuracy, len(train_x), len(test_x), tuple(labels))
