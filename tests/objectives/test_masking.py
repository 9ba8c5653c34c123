"""Masked-LM corruption: rates, untouched positions, targets, whole words, reproducibility."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graft.data.records import IGNORE_INDEX
from graft.objectives.masking import mask_tokens

MASK = 3
# Text ids and replacement ids are disjoint, so every random replacement is visible as one.
REPLACEMENTS = torch.arange(10, 1000)


def _batch(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Offset so the data never shares a random stream with the masking generator of a test
    # (same seed, same draw sizes: the masking draws would repeat the data's own draws).
    g = torch.Generator().manual_seed(10_000 + seed)
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    maskable = torch.rand(B, T, generator=g) > 0.05
    ids[~maskable] = 1  # special tokens / padding
    return ids, maskable


def _mask(
    ids: torch.Tensor, maskable: torch.Tensor, seed: int = 0, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_tokens(
        ids,
        maskable=maskable,
        mask_id=MASK,
        replacement_ids=REPLACEMENTS,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def big() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, maskable = _batch(64, 16384)  # ~1M tokens, ~1M maskable
    corrupted, targets = _mask(ids, maskable)
    return ids, maskable, corrupted, targets


def test_rates_match_bert_recipe(big: tuple[torch.Tensor, ...]) -> None:
    ids, maskable, corrupted, targets = big
    chosen = targets != IGNORE_INDEX
    assert int(maskable.sum()) > 900_000
    assert abs(chosen.sum().item() / maskable.sum().item() - 0.15) < 0.0015
    n = chosen.sum().item()
    masked = (corrupted == MASK) & chosen
    kept = (corrupted == ids) & chosen
    randomised = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.008
    assert abs(randomised.sum().item() / n - 0.1) < 0.008
    assert abs(kept.sum().item() / n - 0.1) < 0.008
    # Random replacements come only from replacement_ids, and are spread over them.
    drawn = corrupted[randomised]
    assert bool(torch.isin(drawn, REPLACEMENTS).all())
    assert drawn.unique().numel() > 0.9 * REPLACEMENTS.numel()


def test_untouched_positions_and_targets(big: tuple[torch.Tensor, ...]) -> None:
    ids, maskable, corrupted, targets = big
    chosen = targets != IGNORE_INDEX
    assert not bool((chosen & ~maskable).any())  # non-maskable never chosen
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # unchosen (incl. non-maskable) unchanged
    assert torch.equal(targets[chosen], ids[chosen])
    assert bool((targets[~chosen] == IGNORE_INDEX).all())
    assert corrupted.dtype == ids.dtype and targets.dtype == ids.dtype


def test_input_is_not_modified_and_result_is_new() -> None:
    ids, maskable = _batch(4, 256)
    before = ids.clone()
    corrupted, _ = _mask(ids, maskable, probability=1.0, mask_fraction=1.0, random_fraction=0.0)
    assert torch.equal(ids, before)
    assert corrupted.data_ptr() != ids.data_ptr()
    assert bool((corrupted[maskable] == MASK).all()) and torch.equal(
        corrupted[~maskable], ids[~maskable]
    )


def test_nothing_maskable_means_nothing_chosen() -> None:
    ids, _ = _batch(2, 64)
    corrupted, targets = _mask(ids, torch.zeros_like(ids, dtype=torch.bool), probability=1.0)
    assert torch.equal(corrupted, ids) and bool((targets == IGNORE_INDEX).all())


def test_same_seed_same_output_different_seed_differs() -> None:
    ids, maskable = _batch(8, 512)
    a, b, c = (
        _mask(ids, maskable, seed=5),
        _mask(ids, maskable, seed=5),
        _mask(ids, maskable, seed=6),
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def _words(B: int, T: int, seed: int = 1) -> torch.Tensor:
    """Word starts for words of 1 to 8 tokens; rows start mid-word."""
    rng = np.random.default_rng(seed)
    starts = np.zeros((B, T), dtype=bool)
    for row in starts:
        at = int(rng.integers(1, 4))
        while at < T:
            row[at] = True
            at += int(rng.integers(1, 9))
    return torch.from_numpy(starts)


def test_whole_word_masking_never_splits_a_word_and_keeps_the_rate() -> None:
    B, T = 32, 16384
    ids, maskable = _batch(B, T, seed=2)
    word_starts = _words(B, T)
    corrupted, targets = _mask(ids, maskable, seed=3, word_starts=word_starts)
    chosen = (targets != IGNORE_INDEX).numpy()
    starts = word_starts.numpy().copy()
    starts[:, 0] = True  # the leading partial word counts as one word
    word = np.cumsum(starts.reshape(-1)) - 1  # global word index of each token
    n_maskable = np.bincount(word, weights=maskable.numpy().reshape(-1))
    n_chosen = np.bincount(word, weights=chosen.reshape(-1))
    assert np.all((n_chosen == 0) | (n_chosen == n_maskable))
    lengths = np.bincount(word)
    assert len(set(lengths.tolist())) >= 8  # words of many lengths were involved
    assert abs(chosen.sum() / maskable.sum().item() - 0.15) < 0.003
    # Long words are chosen as often as short ones: the rate is per word, not per token.
    for sizes in ((1, 2), (6, 7, 8)):
        group = np.isin(lengths, sizes) & (n_maskable > 0)
        assert abs((n_chosen[group] > 0).mean() - 0.15) < 0.01
    # The 80/10/10 split is still per token inside chosen words.
    chosen_t = torch.from_numpy(chosen)
    assert abs(((corrupted == MASK) & chosen_t).sum().item() / chosen.sum() - 0.8) < 0.01
    assert torch.equal(corrupted[~chosen_t], ids[~chosen_t])


def test_cross_entropy_over_targets_ignores_unchosen_positions() -> None:
    ids, maskable = _batch(4, 64)
    ids = ids % 1000  # ids in [0, 1000), specials stay 1: a 1000-word vocabulary
    _, targets = _mask(ids, maskable, probability=0.3)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, 1000, generator=g)
    loss = F.cross_entropy(
        logits.reshape(-1, 1000), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    changed = logits.clone()
    chosen = targets != IGNORE_INDEX
    changed[~chosen] = torch.randn(int((~chosen).sum()), 1000, generator=g) * 10
    again = F.cross_entropy(
        changed.reshape(-1, 1000), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    torch.testing.assert_close(loss, again)
    changed[chosen] += torch.randn(
        int(chosen.sum()), 1000, generator=g
    )  # chosen positions do count
    moved = F.cross_entropy(
        changed.reshape(-1, 1000), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    assert not torch.isclose(loss, moved)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"probability": 1.5}, "probability"),
        ({"probability": -0.1}, "probability"),
        ({"mask_fraction": 1.2}, "mask_fraction"),
        ({"random_fraction": -0.5}, "random_fraction"),
        ({"mask_fraction": 0.8, "random_fraction": 0.3}, "mask_fraction \\+ random_fraction"),
        ({"maskable": torch.ones(2, 5, dtype=torch.bool)}, "maskable"),
        ({"maskable": torch.ones(2, 8, dtype=torch.long)}, "maskable"),
        ({"word_starts": torch.ones(1, 8, dtype=torch.bool)}, "word_starts"),
        ({"replacement_ids": torch.tensor([], dtype=torch.long)}, "replacement_ids"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs: dict, name: str) -> None:
    args = {
        "maskable": torch.ones(2, 8, dtype=torch.bool),
        "mask_id": MASK,
        "replacement_ids": REPLACEMENTS,
        "generator": torch.Generator().manual_seed(0),
        **kwargs,
    }
    with pytest.raises(ValueError, match=name):
        mask_tokens(torch.ones(2, 8, dtype=torch.long), **args)
