"""Next-sentence-prediction pairs from a flat token stream of documents joined by end-of-text.

graft's prepared shards are one 1-D array in which every document is followed by `eot_id`.
`document_spans` finds the documents once; `sample_pair` draws one (first, second, is_next)
pair from them, and `pack_pair` lays it out as `[CLS] first [SEP] second [SEP]` with segment ids.
A segment never crosses a document boundary and never contains the end-of-text id. Every random
choice comes from the caller's `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from graft.errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: fields are arrays, whose == is elementwise
class SegmentPair:
    """Two segments (int64 token arrays) and whether the second directly follows the first."""

    first: np.ndarray
    second: np.ndarray
    is_next: bool
    first_doc: int  # row of `spans` each segment was cut from
    second_doc: int


def document_spans(tokens: np.ndarray, eot_id: int, *, min_length: int = 2) -> np.ndarray:
    """(n_docs, 2) int64 [start, end) of each document, the end-of-text token excluded.

    Text after the last end-of-text is a document too. Documents shorter than `min_length` are
    dropped: a positive pair needs two tokens of one document.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    starts = np.concatenate([[0], eots + 1]).astype(np.int64)
    ends = np.concatenate([eots, [len(tokens)]]).astype(np.int64)
    spans = np.stack([starts, ends], axis=1)
    return spans[ends - starts >= min_length]


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] inclusive."""
    return low + int(torch.randint(high - low + 1, (1,), generator=generator))


def sample_pair(
    tokens: np.ndarray,
    spans: np.ndarray,
    budget: int,
    generator: torch.Generator,
    *,
    next_probability: float = 0.5,
    same_document_negatives: float = 0.0,
) -> SegmentPair:
    """Draw one NSP pair holding at most `budget` content tokens in all (the caller passes
    seq_len - 3).

    The first document is drawn with odds length * (corpus - length) (see below), the first
    segment's share of the budget uniformly in [budget/4, 3*budget/4]. With `next_probability`
    the second segment is what directly follows in the same document; otherwise it is a window
    of the remaining length from another document, also drawn in proportion to its length (so
    which document B comes from says nothing about the label). Short documents shrink the
    segments (never to empty).

    With `same_document_negatives` > 0, that share of the negatives is instead cut from A's own
    document, at least `budget` tokens away from A on either side (a document too short for that
    falls back to another document). Every document then looks the same in positives and negatives,
    so only whether B continues A can tell them apart: with a corpus of a few long books, BERT's
    negatives alone let a small model score by recognising the book, which does not carry over to
    other text.
    """
    if len(spans) < 2:
        raise DataError(
            f"NSP needs at least two documents, found {len(spans)}; add documents to the dataset"
        )
    if budget < 2:
        raise ValueError(f"budget must be >= 2 content tokens, got {budget}")
    if not 0.0 <= next_probability <= 1.0:
        raise ValueError(f"next_probability must be in [0, 1], got {next_probability}")
    lengths = spans[:, 1] - spans[:, 0]
    if lengths.min() < 2:
        raise ValueError(
            "every span must hold at least 2 tokens; "
            "build spans with document_spans(min_length >= 2)"
        )

    # The first document is drawn with odds L * (T - L) (L its length, T the corpus's): negatives
    # then draw B's document in proportion to its length among the others, and the pair (A's, B's
    # document) has odds L_a * L_b, so A's and B's documents are distributed alike for positives and
    # negatives: which document a segment comes from never gives the label away.
    cumulative = np.cumsum(lengths)
    weights = np.cumsum(lengths * (int(cumulative[-1]) - lengths))
    draw = _randint(0, int(weights[-1]) - 1, generator)
    first_doc = int(np.searchsorted(weights, draw, side="right"))
    is_next = bool(torch.rand((), generator=generator) < next_probability)
    share = _randint(max(1, budget // 4), max(1, min(budget - 1, (3 * budget) // 4)), generator)
    start, length = int(spans[first_doc, 0]), int(lengths[first_doc])

    if is_next:
        # Both segments in one window of the document; a short document scales the split down.
        total = min(budget, length)
        n_first = min(max(1, round(share * total / budget)), total - 1)
        offset = start + _randint(0, length - total, generator)
        first = tokens[offset : offset + n_first]
        second = tokens[offset + n_first : offset + total]
        second_doc = first_doc
    else:
        n_first = min(share, length)
        n_second = budget - n_first
        # Room for A, B and a gap of `budget` tokens between them, in either order.
        same_document = (
            same_document_negatives > 0
            and length >= n_first + n_second + budget
            and bool(torch.rand((), generator=generator) < same_document_negatives)
        )
        if same_document:
            # B's window start, drawn over the positions that leave the gap: before A or after it.
            gap_total = length - n_first - n_second - budget  # free slack to distribute
            a_rel = _randint(0, gap_total, generator)  # slack before the earlier of the two
            # slack between the gap and the later one
            b_rel = _randint(0, gap_total - a_rel, generator)
            a_first = bool(torch.rand((), generator=generator) < 0.5)
            early = start + a_rel
            late = early + (n_first if a_first else n_second) + budget + b_rel
            a_start, b_start = (early, late) if a_first else (late, early)
            first = tokens[a_start : a_start + n_first]
            second = tokens[b_start : b_start + n_second]
            second_doc = first_doc
        else:
            offset = start + _randint(0, length - n_first, generator)
            first = tokens[offset : offset + n_first]
            # Length-proportional over the other documents, like the first segment's document:
            # were it uniform, a second segment from a short document would mostly be a negative,
            # and the model could score well by recognising documents instead of judging whether
            # B follows A.
            before = int(cumulative[first_doc - 1]) if first_doc else 0
            token = _randint(0, int(cumulative[-1]) - length - 1, generator)
            token += length if token >= before else 0  # skip over first_doc's tokens
            second_doc = int(np.searchsorted(cumulative, token, side="right"))
            other_start, other_length = int(spans[second_doc, 0]), int(lengths[second_doc])
            n_second = min(budget - n_first, other_length)
            other_offset = other_start + _randint(0, other_length - n_second, generator)
            second = tokens[other_offset : other_offset + n_second]
    return SegmentPair(
        np.array(first, dtype=np.int64),
        np.array(second, dtype=np.int64),
        is_next,
        first_doc,
        int(second_doc),
    )


def pack_pair(
    pair: SegmentPair, *, cls_id: int, sep_id: int, pad_id: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """`[CLS] first [SEP] second [SEP]` right-padded to seq_len; returns (input_ids,
    token_type_ids, n_real).

    token_type_ids are 0 for [CLS], first and its [SEP], 1 for second and its [SEP], 0 on padding.
    If the pair does not fit, the longer segment loses a token at a time; first is cut at its
    front and second at its back, so a positive pair stays contiguous where the two meet.
    """
    room = seq_len - 3
    if room < 2:
        raise ValueError(f"seq_len must be >= 5 to hold [CLS] a [SEP] b [SEP], got {seq_len}")
    if len(pair.first) == 0 or len(pair.second) == 0:
        raise ValueError("both segments of a pair must be non-empty")
    n_first, n_second = len(pair.first), len(pair.second)
    while n_first + n_second > room:
        if n_first > n_second:
            n_first -= 1
        else:
            n_second -= 1
    first, second = pair.first[len(pair.first) - n_first :], pair.second[:n_second]
    n_real = n_first + n_second + 3
    input_ids = np.full(seq_len, pad_id, dtype=np.int64)
    input_ids[:n_real] = np.concatenate([[cls_id], first, [sep_id], second, [sep_id]])
    token_type_ids = np.zeros(seq_len, dtype=np.int64)
    token_type_ids[n_first + 2 : n_real] = 1
    return input_ids, token_type_ids, n_real
