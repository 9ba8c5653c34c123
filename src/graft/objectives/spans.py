"""Span corruption for denoising: which tokens are dropped, and how input and target are built.

`noise_span_mask` is T5's random_spans_noise_mask (without its optional random roll): a fixed
number of noise tokens cut into a fixed number of spans of random lengths, interleaved with
non-noise spans, starting with non-noise (so the sequence always ends in noise).
`span_corruption` is T5's objective: each dropped span becomes one sentinel in the input and the
target lists `sentinel_i span_i ...` and a closing sentinel; `restore_spans` inverts it exactly.
`span_infilling` is BART's text infilling: each dropped span becomes one mask id and the target
is the whole original sequence. Outputs are int64; every random choice comes from the caller's
`torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _random_segmentation(n_items: int, n_parts: int, generator: torch.Generator) -> np.ndarray:
    """Split n_items into n_parts positive lengths, every such split equally likely."""
    cuts = torch.randperm(n_items - 1, generator=generator)[: n_parts - 1].sort().values.numpy() + 1
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def noise_span_mask(
    length: int,
    *,
    noise_density: float,
    mean_span: float,
    max_spans: int,
    generator: torch.Generator,
) -> np.ndarray:
    """Bool (length,), True where a token is dropped: round(length * noise_density) tokens (at
    least 1, at most length - 1) in round(noise / mean_span) spans, at most max_spans."""
    if length < 2:
        raise ValueError(f"span corruption needs a sequence of at least 2 tokens, got {length}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span < 1.0:
        raise ValueError(f"mean_span must be >= 1, got {mean_span}")
    if max_spans < 1:
        raise ValueError(f"max_spans must be >= 1, got {max_spans}")
    n_noise = min(max(1, round(length * noise_density)), length - 1)
    # Each span needs one noise token and a non-noise token before it.
    n_spans = min(max(1, round(n_noise / mean_span)), max_spans, n_noise, length - n_noise)
    noise = _random_segmentation(n_noise, n_spans, generator)
    keep = _random_segmentation(length - n_noise, n_spans, generator)
    runs = np.stack([keep, noise], axis=1).reshape(-1)  # keep_0, noise_0, keep_1, noise_1, ...
    return np.repeat(np.tile([False, True], n_spans), runs)


def _run_starts(drop: np.ndarray) -> np.ndarray:
    """True at the first token of each run of `drop`."""
    return drop & ~np.concatenate([[False], drop[:-1]])


def _collapse_runs(tokens: np.ndarray, drop: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Replace the i-th run of `drop` by the single id fill[i]."""
    starts = _run_starts(drop)
    out = np.where(starts, fill[np.maximum(np.cumsum(starts) - 1, 0)], tokens)
    return out[~drop | starts]


def _check_sentinels(tokens: np.ndarray, sentinel_ids: Sequence[int]) -> np.ndarray:
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    if sentinels.ndim != 1 or len(sentinels) < 2:
        raise ValueError(
            "span corruption needs at least 2 sentinel ids (spans + a closing one), "
            f"got {len(sentinel_ids)}"
        )
    if np.isin(tokens, sentinels).any():
        raise ValueError(
            "tokens contain a sentinel id; sentinels must be ids that never occur in the text"
        )
    return sentinels


def span_corruption(
    tokens: np.ndarray,
    *,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one sequence; returns (input, target).

    input: the sequence with its i-th dropped span replaced by sentinel_ids[i].
    target: `sentinel_0 span_0 sentinel_1 span_1 ... sentinel_k`, the closing sentinel marking the
    end as in T5. At most len(sentinel_ids) - 1 spans are made, so the closing one always exists.
    """
    tokens = np.asarray(tokens).astype(np.int64)
    sentinels = _check_sentinels(tokens, sentinel_ids)
    drop = noise_span_mask(
        len(tokens),
        noise_density=noise_density,
        mean_span=mean_span,
        max_spans=len(sentinels) - 1,
        generator=generator,
    )
    corrupted = _collapse_runs(tokens, drop, sentinels)
    # The target: the dropped tokens, sentinel_i inserted before the first token of span i.
    starts = _run_starts(drop)
    n_spans = int(starts.sum())
    at = np.cumsum(drop)[starts] - 1  # where each span begins among the dropped tokens
    target = np.insert(tokens[drop], at, sentinels[:n_spans])
    # The closing sentinel, as in T5.
    target = np.concatenate([target, sentinels[n_spans : n_spans + 1]])
    return corrupted, target


def restore_spans(
    corrupted: np.ndarray, target: np.ndarray, sentinel_ids: Sequence[int]
) -> np.ndarray:
    """The original sequence from span_corruption's (input, target): each sentinel in the input is
    replaced by the tokens following the same sentinel in the target."""
    corrupted, target = np.asarray(corrupted, dtype=np.int64), np.asarray(target, dtype=np.int64)
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    marks = np.flatnonzero(np.isin(target, sentinels))
    bounds = np.concatenate([marks, [len(target)]])
    spans = {int(target[a]): target[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:])}
    pieces: list[np.ndarray] = []
    at = 0
    for i in np.flatnonzero(np.isin(corrupted, sentinels)):
        if int(corrupted[i]) not in spans:
            raise ValueError(f"sentinel {int(corrupted[i])} is in the input but not in the target")
        pieces += [corrupted[at:i], spans[int(corrupted[i])]]
        at = int(i) + 1
    pieces.append(corrupted[at:])
    return np.concatenate(pieces)


def span_infilling(
    tokens: np.ndarray,
    *,
    mask_id: int,
    noise_density: float = 0.3,
    mean_span: float = 3.0,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """BART text infilling of one sequence; returns (input, target).

    input: the sequence with each dropped span replaced by a single mask_id (so the model must
    also infer how many tokens are missing); target: the original sequence (a copy). Spans are
    laid out as in noise_span_mask, not drawn from BART's Poisson(3) lengths.
    """
    tokens = np.asarray(tokens).astype(np.int64)
    drop = noise_span_mask(
        len(tokens),
        noise_density=noise_density,
        mean_span=mean_span,
        max_spans=len(tokens),
        generator=generator,
    )
    corrupted = _collapse_runs(tokens, drop, np.full(len(tokens), mask_id, dtype=np.int64))
    return corrupted, tokens.copy()
