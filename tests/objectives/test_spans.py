"""Span corruption (T5) and text infilling (BART): masks, round trips, rates, reproducibility."""

import numpy as np
import pytest
import torch

from graft.objectives.spans import noise_span_mask, restore_spans, span_corruption, span_infilling

SENTINELS = list(range(1000, 1100))  # 100 sentinels: never the cap below ~2000 tokens
MASK = 7


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def _tokens(length: int, seed: int) -> np.ndarray:
    return (
        np.random.default_rng(seed).integers(10, 1000, length).astype(np.uint16)
    )  # no sentinel, no mask


def test_noise_span_mask_counts_and_layout() -> None:
    g = torch.Generator().manual_seed(0)
    for length in [2, 3, 5, 10, 37, 100, 512]:
        for density, mean in [(0.15, 3.0), (0.5, 1.0), (0.3, 8.0), (0.9, 3.0)]:
            mask = noise_span_mask(
                length, noise_density=density, mean_span=mean, max_spans=50, generator=g
            )
            n_noise = min(max(1, round(length * density)), length - 1)
            n_spans = min(max(1, round(n_noise / mean)), 50, n_noise, length - n_noise)
            assert mask.dtype == bool and mask.shape == (length,)
            assert mask.sum() == n_noise and len(_runs(mask)) == n_spans
            assert not mask[0] and mask[-1]  # T5 layout: non-noise first, noise last


def test_noise_span_lengths_are_random_not_fixed() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [
        n
        for _ in range(200)
        for n in _runs(
            noise_span_mask(200, noise_density=0.15, mean_span=3.0, max_spans=99, generator=g)
        )
    ]
    assert min(lengths) == 1 and max(lengths) >= 8  # a random segmentation, not equal spans
    starts = [
        int(
            np.flatnonzero(
                noise_span_mask(200, noise_density=0.15, mean_span=3.0, max_spans=99, generator=g)
            )[0]
        )
        for _ in range(200)
    ]
    assert len(set(starts)) > 20  # where the first span begins varies


def test_restore_inverts_span_corruption_exactly() -> None:
    rng = np.random.default_rng(0)
    for case in range(400):
        length = int(rng.integers(2, 601))
        tokens = _tokens(length, case)
        sentinels = SENTINELS[: int(rng.integers(2, 12))]  # small sets make the cap bind too
        density = float(rng.choice([0.05, 0.15, 0.5, 0.95]))
        g = torch.Generator().manual_seed(case)
        inp, target = span_corruption(
            tokens, sentinel_ids=sentinels, noise_density=density, mean_span=3.0, generator=g
        )
        assert inp.dtype == np.int64 and target.dtype == np.int64
        assert np.array_equal(restore_spans(inp, target, sentinels), tokens)


def test_sentinels_in_order_once_and_capped() -> None:
    g = torch.Generator().manual_seed(1)
    for n_sentinels in [2, 3, 5, 100]:
        sentinels = SENTINELS[:n_sentinels]
        for length in [2, 10, 50, 600]:
            tokens = _tokens(length, length)
            inp, target = span_corruption(tokens, sentinel_ids=sentinels, generator=g)
            used = inp[np.isin(inp, sentinels)].tolist()
            assert 1 <= len(used) <= n_sentinels - 1
            assert used == sentinels[: len(used)]  # each once, in increasing order
            assert (
                target[np.isin(target, sentinels)].tolist() == sentinels[: len(used) + 1]
            )  # plus the closing one
            assert target[0] == sentinels[0] and target[-1] == sentinels[len(used)]
            assert (
                len(inp) - len(used) + len(target) - len(used) - 1 == length
            )  # every token in exactly one
    # A long sequence with few sentinels still drops the full noise fraction, in fewer, longer
    # spans.
    inp, target = span_corruption(_tokens(600, 0), sentinel_ids=SENTINELS[:3], generator=g)
    assert len(target) - 3 == round(600 * 0.15) and np.isin(inp, SENTINELS).sum() == 2


def test_noise_rate_and_mean_span_length() -> None:
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(2)
    dropped, total, spans = 0, 0, 0
    while total < 120_000:
        length = int(rng.integers(64, 600))
        mask = noise_span_mask(
            length, noise_density=0.15, mean_span=3.0, max_spans=length, generator=g
        )
        dropped, total, spans = dropped + int(mask.sum()), total + length, spans + len(_runs(mask))
    assert abs(dropped / total - 0.15) < 0.01
    assert abs(dropped / spans - 3.0) < 0.3


def test_span_infilling_one_mask_per_span_target_is_original() -> None:
    g = torch.Generator().manual_seed(3)
    for length in [2, 3, 20, 333]:
        tokens = np.arange(100, 100 + length, dtype=np.uint32)  # unique ids show what was dropped
        inp, target = span_infilling(tokens, mask_id=MASK, generator=g)
        assert np.array_equal(target, tokens) and target.dtype == np.int64
        assert not np.shares_memory(target, tokens)
        assert not ((inp[1:] == MASK) & (inp[:-1] == MASK)).any()
        # Rebuild the expected input from what survived: each dropped run becomes one mask.
        dropped = ~np.isin(tokens, inp)
        expected = [
            MASK if d else int(t)
            for i, (t, d) in enumerate(zip(tokens, dropped))
            if not (d and i and dropped[i - 1])
        ]
        assert inp.tolist() == expected
        assert dropped.sum() == min(max(1, round(length * 0.3)), length - 1)


def test_same_seed_same_output() -> None:
    tokens = _tokens(300, 0)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return span_corruption(
            tokens, sentinel_ids=SENTINELS, generator=torch.Generator().manual_seed(seed)
        )

    (a, b), (c, d), (e, _) = run(5), run(5), run(6)
    assert np.array_equal(a, c) and np.array_equal(b, d) and not np.array_equal(a, e)

    def fill(seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        return span_infilling(tokens, mask_id=MASK, generator=generator)[0]

    assert np.array_equal(fill(5), fill(5)) and not np.array_equal(fill(5), fill(6))


def test_bad_arguments_raise_value_error() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(_tokens(10, 0), sentinel_ids=SENTINELS[:1], generator=g)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_corruption(_tokens(1, 0), sentinel_ids=SENTINELS, generator=g)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_infilling(_tokens(1, 0), mask_id=MASK, generator=g)
    with pytest.raises(ValueError, match="contain a sentinel"):
        span_corruption(np.array([5, SENTINELS[3], 6]), sentinel_ids=SENTINELS, generator=g)
    with pytest.raises(ValueError, match="noise_density"):
        noise_span_mask(10, noise_density=1.0, mean_span=3.0, max_spans=5, generator=g)
    with pytest.raises(ValueError, match="mean_span"):
        noise_span_mask(10, noise_density=0.5, mean_span=0.5, max_spans=5, generator=g)
    with pytest.raises(ValueError, match="max_spans"):
        noise_span_mask(10, noise_density=0.5, mean_span=3.0, max_spans=0, generator=g)
    with pytest.raises(ValueError, match="not in the target"):
        restore_spans(np.array([5, SENTINELS[0]]), np.array([SENTINELS[1], 9]), SENTINELS)
