"""Tests for graft.experiments.probe: pooled sequence features and the linear probe on them."""

from __future__ import annotations

import pytest
import torch

from graft.errors import ConfigError, DataError
from graft.experiments.probe import linear_probe, sequence_features
from graft.model.config import preset
from graft.model.transformer import LanguageModel

POOLINGS = ("mean", "last", "first")


def tiny_model(**overrides: object) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(preset("nano", vocab_size=64, max_seq_len=32, **overrides))


def random_sequences(n: int, seed: int, lengths: tuple[int, int] = (1, 20)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g).tolist()
    return [torch.randint(1, 64, (size,), generator=g).tolist() for size in sizes]


# -- features --------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_never_changes_a_sequences_features(pooling: str, attention: str) -> None:
    model = tiny_model(attention=attention)
    seqs = random_sequences(7, seed=1)
    batched = sequence_features(model, seqs, max_len=32, batch_size=7, pooling=pooling)
    for i, seq in enumerate(seqs):
        alone = sequence_features(model, [seq], max_len=32, pooling=pooling)
        assert torch.allclose(batched[i], alone[0], atol=1e-5), f"sequence {i} ({len(seq)} tokens)"


def test_pooling_reads_the_right_positions() -> None:
    model = tiny_model().eval()
    seq = [5, 9, 13, 2, 7]
    with torch.no_grad():
        hidden = model(torch.tensor([seq]), heads=[]).hidden[0]  # unpadded: the default causal mask
    feats = {
        p: sequence_features(model, [seq, [1] * 12], max_len=32, pooling=p)[0] for p in POOLINGS
    }
    assert torch.allclose(feats["mean"], hidden.mean(dim=0), atol=1e-5)
    assert torch.allclose(feats["last"], hidden[-1], atol=1e-5)
    assert torch.allclose(feats["first"], hidden[0], atol=1e-5)


def test_features_keep_input_order_and_shape_across_batches() -> None:
    model = tiny_model()
    seqs = random_sequences(10, seed=2)
    whole = sequence_features(model, seqs, max_len=32, batch_size=10)
    small = sequence_features(model, seqs, max_len=32, batch_size=3)
    assert whole.shape == (10, model.config.d_model) and whole.dtype == torch.float32
    assert torch.allclose(whole, small, atol=1e-5)


def test_long_sequences_keep_their_first_max_len_tokens() -> None:
    model = tiny_model()
    long = list(range(1, 31))
    cut = sequence_features(model, [long], max_len=8)
    assert torch.allclose(cut, sequence_features(model, [long[:8]], max_len=32), atol=1e-6)


def test_model_mode_is_restored() -> None:
    model = tiny_model().train()
    sequence_features(model, [[1, 2, 3]], max_len=8)
    assert model.training


def test_feature_argument_errors() -> None:
    model = tiny_model()
    with pytest.raises(DataError, match=r"input_ids\[1\]: empty sequence"):
        sequence_features(model, [[1], []], max_len=8)
    with pytest.raises(
        ConfigError, match="max_len must be between 1 and the model's max_seq_len 32, got 33"
    ):
        sequence_features(model, [[1]], max_len=33)
    with pytest.raises(ConfigError, match="pooling must be one of mean, last, first"):
        sequence_features(model, [[1]], max_len=8, pooling="max")  # type: ignore[arg-type]


# -- the probe -------------------------------------------------------------------------------


def clusters(
    n: int, seed: int, classes: int = 3, dim: int = 16, spread: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around far-apart class centres: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 4.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = (
        centres[y] + spread * torch.randn(n, dim, generator=g) + 10.0
    )  # offset: standardising must cope
    return x, y


def test_probe_separates_separable_features() -> None:
    train_x, train_y = clusters(150, seed=0)
    test_x, test_y = clusters(300, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, labels=("a", "b", "c"))
    assert result.accuracy >= 0.99 and result.train_accuracy == 1.0
    assert (result.n_train, result.n_test, result.labels) == (150, 300, ("a", "b", "c"))


def test_probe_is_at_chance_on_random_labels() -> None:
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 8, generator=g), torch.randn(2000, 8, generator=g)
    train_y, test_y = (
        torch.randint(0, 2, (300,), generator=g),
        torch.randint(0, 2, (2000,), generator=g),
    )
    result = linear_probe(train_x, train_y, test_x, test_y, labels=("neg", "pos"))
    # 2,000 test labels: chance is 0.5 with a standard error of about 0.011.
    assert abs(result.accuracy - 0.5) < 0.05


def test_probe_is_deterministic_for_a_seed() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 12, generator=g), torch.randint(0, 3, (120,), generator=g)
    args = (x[:80], y[:80], x[80:], y[80:])
    first = linear_probe(*args, labels=("a", "b", "c"), steps=30, seed=4)
    assert linear_probe(*args, labels=("a", "b", "c"), steps=30, seed=4) == first


def test_probe_on_model_features_end_to_end() -> None:
    # Class 0 sequences use tokens 1..31, class 1 tokens 32..63: mean-pooled features of even an
    # untrained model tell them apart.
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (80,), generator=g)
    seqs = [
        (torch.randint(1, 32, (int(n),), generator=g) + 31 * int(label)).tolist()
        for label, n in zip(y, torch.randint(3, 12, (80,), generator=g))
    ]
    feats = sequence_features(tiny_model(), seqs, max_len=16)
    result = linear_probe(feats[:50], y[:50], feats[50:], y[50:], labels=("low", "high"))
    assert result.accuracy >= 0.9


def test_probe_argument_errors() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="at least 2 labels"):
        linear_probe(x, y, x, y, labels=("a",))
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        linear_probe(x, y, x, y, labels=("a", "b"), steps=0)
    with pytest.raises(ValueError, match=r"labels must be integer class indices in 0\.\.1"):
        linear_probe(x, y + 1, x, y, labels=("a", "b"))
    with pytest.raises(ValueError, match=r"test: expected features \(N, C\) and labels \(N,\)"):
        linear_probe(x, y, x[:3], y, labels=("a", "b"))
