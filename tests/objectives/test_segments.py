"""Next-sentence-prediction pairs: document spans, sampling, packing."""

import numpy as np
import pytest
import torch

from graft.errors import DataError
from graft.objectives.segments import SegmentPair, document_spans, pack_pair, sample_pair

EOT = 0
CLS, SEP, PAD = 101, 102, 100


def test_document_spans_exclude_eot_drop_short_and_keep_a_trailing_document() -> None:
    tokens = np.array([5, 6, EOT, 7, EOT, EOT, 8, 9, 10], dtype=np.uint16)
    assert document_spans(tokens, EOT).tolist() == [[0, 2], [6, 9]]
    assert document_spans(tokens, EOT, min_length=1).tolist() == [[0, 2], [3, 4], [6, 9]]
    assert document_spans(tokens, EOT, min_length=3).tolist() == [[6, 9]]
    assert document_spans(tokens[:5], EOT).dtype == np.int64  # ends with EOT: no empty trailing doc
    assert document_spans(tokens[:5], EOT).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="min_length"):
        document_spans(tokens, EOT, min_length=0)


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray]:
    """Documents of very different lengths (1 to 3000 tokens). Each content token is its own
    stream position + 1, so a segment shows exactly where it was cut from."""
    rng = np.random.default_rng(0)
    lengths = rng.choice([1, 2, 3, 5, 17, 60, 400, 3000], size=120)
    pieces = []
    for n in lengths:
        pieces += [np.ones(n, dtype=np.uint32), np.zeros(1, dtype=np.uint32)]
    tokens = np.concatenate(pieces)
    tokens[tokens != EOT] = (np.flatnonzero(tokens != EOT) + 1).astype(np.uint32)
    return tokens, document_spans(tokens, EOT)


def _where(tokens: np.ndarray, spans: np.ndarray, segment: np.ndarray) -> tuple[int, int]:
    """(document row, stream offset) of a segment, asserting it is a contiguous window of one
    document."""
    offset = int(segment[0]) - 1
    assert np.array_equal(tokens[offset : offset + len(segment)], segment)
    doc = int(np.searchsorted(spans[:, 0], offset, side="right")) - 1
    assert spans[doc, 0] <= offset and offset + len(segment) <= spans[doc, 1]
    return doc, offset


def test_pairs_are_windows_of_their_documents(stream: tuple[np.ndarray, np.ndarray]) -> None:
    tokens, spans = stream
    budget = 125
    g = torch.Generator().manual_seed(0)
    n_next, n_short_negatives = 0, 0
    for _ in range(5000):
        pair = sample_pair(tokens, spans, budget, g)
        assert len(pair.first) >= 1 and len(pair.second) >= 1
        assert len(pair.first) + len(pair.second) <= budget
        assert not (pair.first == EOT).any() and not (pair.second == EOT).any()
        first_doc, first_at = _where(tokens, spans, pair.first)
        second_doc, second_at = _where(tokens, spans, pair.second)
        assert (first_doc, second_doc) == (pair.first_doc, pair.second_doc)
        if pair.is_next:
            n_next += 1
            assert second_at == first_at + len(pair.first)  # directly follows, same document
            assert pair.first_doc == pair.second_doc
        else:
            assert pair.first_doc != pair.second_doc
            n_short_negatives += int(spans[second_doc, 1] - spans[second_doc, 0] < 5)
        if spans[first_doc, 1] - spans[first_doc, 0] >= budget:
            # A long enough document fills the budget, the first segment getting 1/4 to 3/4 of it.
            assert budget // 4 <= len(pair.first) <= 3 * budget // 4
            if pair.is_next:
                assert len(pair.first) + len(pair.second) == budget
    assert abs(n_next / 5000 - 0.5) < 0.02
    assert (
        n_short_negatives > 0
    )  # short documents are used as negatives too (in proportion to their length)


def test_documents_are_drawn_with_odds_length_times_the_rest(
    stream: tuple[np.ndarray, np.ndarray],
) -> None:
    """First documents with odds L * (T - L); negatives' second documents then come out with the
    same odds, so neither segment's document tells positives from negatives."""
    tokens, spans = stream
    lengths = (spans[:, 1] - spans[:, 0]).astype(np.float64)
    odds = lengths * (lengths.sum() - lengths)
    g = torch.Generator().manual_seed(1)
    pairs = [sample_pair(tokens, spans, 64, g, next_probability=0.0) for _ in range(4000)]
    firsts = np.bincount([p.first_doc for p in pairs], minlength=len(spans))
    seconds = np.bincount([p.second_doc for p in pairs], minlength=len(spans))
    long_docs = lengths >= 400
    expected = odds[long_docs].sum() / odds.sum()
    assert abs(firsts[long_docs].sum() / 4000 - expected) < 0.03
    assert abs(seconds[long_docs].sum() / 4000 - expected) < 0.03
    assert all(not p.is_next for p in pairs)


def test_document_odds_are_exact_on_three_short_documents() -> None:
    tokens = np.array(
        [5, 6, EOT, 7, 8, 9, 10, 11, 12, EOT, 13, 14, 15, 16, EOT], dtype=np.uint16
    )  # 2, 6, 4
    spans = document_spans(tokens, EOT)
    g = torch.Generator().manual_seed(5)
    pairs = [sample_pair(tokens, spans, 8, g) for _ in range(6000)]
    odds = np.array([2 * 10, 6 * 6, 4 * 8], dtype=np.float64)
    shares = np.bincount([p.first_doc for p in pairs], minlength=3) / len(pairs)
    assert np.abs(shares - odds / odds.sum()).max() < 0.03
    assert all(p.second_doc != p.first_doc for p in pairs if not p.is_next)


def test_one_document_raises_data_error() -> None:
    tokens = np.array([5, 6, 7, EOT, 8, EOT], dtype=np.uint16)  # the second document is too short
    spans = document_spans(tokens, EOT)
    with pytest.raises(DataError, match="at least two documents, found 1"):
        sample_pair(tokens, spans, 10, torch.Generator().manual_seed(0))


def test_bad_arguments_raise_value_error(stream: tuple[np.ndarray, np.ndarray]) -> None:
    tokens, spans = stream
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="budget"):
        sample_pair(tokens, spans, 1, g)
    with pytest.raises(ValueError, match="next_probability"):
        sample_pair(tokens, spans, 10, g, next_probability=1.5)
    with pytest.raises(ValueError, match="min_length"):
        sample_pair(tokens, document_spans(tokens, EOT, min_length=1), 10, g)


def test_same_seed_same_pairs(stream: tuple[np.ndarray, np.ndarray]) -> None:
    tokens, spans = stream

    def draw(seed: int) -> list[SegmentPair]:
        return [
            sample_pair(tokens, spans, 50, g)
            for g in [torch.Generator().manual_seed(seed)]
            for _ in range(50)
        ]

    def key(p: SegmentPair) -> tuple:
        return (p.first.tolist(), p.second.tolist(), p.is_next, p.first_doc, p.second_doc)

    a, b, c = draw(3), draw(3), draw(4)
    assert [key(p) for p in a] == [key(p) for p in b]
    assert [key(p) for p in a] != [key(p) for p in c]


def test_pack_pair_layout_and_token_types() -> None:
    pair = SegmentPair(np.array([1, 2, 3]), np.array([4, 5]), True, 0, 0)
    ids, types, n_real = pack_pair(pair, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=12)
    assert ids.tolist() == [CLS, 1, 2, 3, SEP, 4, 5, SEP, PAD, PAD, PAD, PAD]
    assert types.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert n_real == 8 and ids.dtype == np.int64 and types.dtype == np.int64
    ids, types, n_real = pack_pair(
        pair, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=8
    )  # exactly full
    assert ids.tolist() == [CLS, 1, 2, 3, SEP, 4, 5, SEP] and n_real == 8


def test_pack_pair_truncates_the_longer_segment_keeping_the_join() -> None:
    long_first = SegmentPair(np.arange(1, 11), np.array([20, 21]), True, 0, 0)
    ids, types, n_real = pack_pair(long_first, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=9)
    # Room for 6 content tokens: first keeps its last 4 (the ones next to second), second all.
    assert ids.tolist() == [CLS, 7, 8, 9, 10, SEP, 20, 21, SEP] and n_real == 9
    assert types.tolist() == [0] * 6 + [1] * 3
    long_second = SegmentPair(np.array([1, 2]), np.arange(20, 30), False, 0, 1)
    ids, _, _ = pack_pair(long_second, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=9)
    assert ids.tolist() == [CLS, 1, 2, SEP, 20, 21, 22, 23, SEP]
    both_long = SegmentPair(np.arange(1, 11), np.arange(20, 30), True, 0, 0)
    ids, types, _ = pack_pair(both_long, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=8)
    assert ids.tolist() == [CLS, 8, 9, 10, SEP, 20, 21, SEP]  # 5 content tokens: 3 + 2
    assert types.tolist() == [0] * 5 + [1] * 3
    with pytest.raises(ValueError, match="seq_len"):
        pack_pair(both_long, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=4)


def test_sampled_pairs_pack_into_seq_len(stream: tuple[np.ndarray, np.ndarray]) -> None:
    tokens, spans = stream
    g = torch.Generator().manual_seed(2)
    seq_len = 64
    for _ in range(200):
        pair = sample_pair(tokens, spans, seq_len - 3, g)
        ids, types, n_real = pack_pair(pair, cls_id=CLS, sep_id=SEP, pad_id=PAD, seq_len=seq_len)
        assert n_real == len(pair.first) + len(pair.second) + 3  # no truncation needed
        assert (ids[n_real:] == PAD).all() and (types[n_real:] == 0).all()
        assert ids[1 : 1 + len(pair.first)].tolist() == pair.first.tolist()
        assert types[:n_real].sum() == len(pair.second) + 1


def test_the_second_segments_document_does_not_give_the_label_away() -> None:
    """Positives and negatives draw B's document with the same (length-proportional) odds, so a
    model cannot predict is-next from which document B comes from."""
    import collections

    docs = [np.arange(1, 1 + n) + 1000 * i for i, n in enumerate([2000, 200, 200, 1000])]
    tokens = np.concatenate([np.concatenate([d, [0]]) for d in docs]).astype(np.int64)
    spans = document_spans(tokens, 0)
    gen = torch.Generator().manual_seed(11)
    by_label = {True: collections.Counter(), False: collections.Counter()}
    for _ in range(20000):
        pair = sample_pair(tokens, spans, 60, gen)
        by_label[pair.is_next][pair.second_doc] += 1
    for doc in range(4):
        share_pos = by_label[True][doc] / sum(by_label[True].values())
        share_neg = by_label[False][doc] / sum(by_label[False].values())
        assert abs(share_pos - share_neg) < 0.03, (doc, share_pos, share_neg)


def test_same_document_negatives_are_distant_windows_of_a_documents_own_text(stream) -> None:
    tokens, spans = stream
    budget = 125
    g = torch.Generator().manual_seed(1)
    pairs = [
        sample_pair(tokens, spans, budget, g, same_document_negatives=1.0) for _ in range(3000)
    ]
    negatives = [p for p in pairs if not p.is_next]
    lengths = spans[:, 1] - spans[:, 0]
    for pair in negatives:
        first_doc, first_at = _where(tokens, spans, pair.first)
        second_doc, second_at = _where(tokens, spans, pair.second)
        assert (first_doc, second_doc) == (pair.first_doc, pair.second_doc)
        assert len(pair.first) + len(pair.second) <= budget
        if first_doc == second_doc:
            # Never overlapping, never adjacent: at least `budget` tokens between the two windows.
            gap = (
                second_at - (first_at + len(pair.first))
                if second_at > first_at
                else first_at - (second_at + len(pair.second))
            )
            assert gap >= budget
        else:  # only documents too short to hold A, B and the gap fall back to another document
            assert lengths[first_doc] < 2 * budget
    same = [p for p in negatives if p.first_doc == p.second_doc]
    assert len(same) > 0.8 * len(negatives)
    # Both orders occur, so "B comes earlier in the book" is no cue either.
    before = sum(int(p.second[0]) < int(p.first[0]) for p in same)
    assert 0.4 < before / len(same) < 0.6
    # A share of 0.5: about half of the negatives from long enough documents stay in the document.
    g = torch.Generator().manual_seed(2)
    half = [sample_pair(tokens, spans, budget, g, same_document_negatives=0.5) for _ in range(3000)]
    long_negatives = [p for p in half if not p.is_next and lengths[p.first_doc] >= 2 * budget]
    share = sum(p.first_doc == p.second_doc for p in long_negatives) / len(long_negatives)
    assert 0.4 < share < 0.6
