"""Deduplication and decontamination of a document stream: exact duplicates, near-duplicates
(MinHash LSH) and documents sharing a long word n-gram with an evaluation set.

`DedupStage(config)(docs)` yields the first document of every group of duplicates, in input
order, and drops the others with a reason (`stats.rejected`):

- "contaminated": the document shares a word n-gram (`decontam_n` words, 13 by default as in
  GPT-3's decontamination, Brown et al. 2020) with an evaluation text read from
  `decontaminate` files; `stats.notes["contaminated_by"]` counts them by evaluation file.
  Words are lower-cased `\\w+` runs, so punctuation and case do not hide an overlap. An
  evaluation text shorter than n words (but at least `_MIN_EVAL_WORDS`) counts whole.
- "exact duplicate": the same text once normalised (NFC, lower case, whitespace collapsed).
- "near duplicate": a MinHash estimate of the Jaccard similarity of the documents' sets of
  word `shingle`-grams is at least `threshold` with an earlier kept document. A document of
  fewer words than `shingle` is shingled by 5-character runs instead.

The defaults, shingles of 3 words and threshold 0.6, were chosen on a test corpus of ~200-word
documents with copies edited at 2-5% of their words (substitutions, insertions, deletions):
such a copy keeps a 3-shingle Jaccard of 0.76-0.95 with its original, while documents sharing
half their sentences stay at 0.5 or below and unrelated ones near 0 (tests/data/test_dedup.py
measures recall and precision). The usual 5-word shingles at 0.8 only catch copies edited at
under about 2%.

LSH finds candidate pairs; each candidate is then checked with the signatures' own Jaccard
estimate, so the index is tuned for recall (datasketch weights 0.2 false positives, 0.8 false
negatives) and its extra candidates cost only a comparison.

The LSH bands and rows are datasketch's MinHashLSH choice (`lsh_params`), but the index is
graft's own, in numpy arrays rather than Python objects (`_KeyIndex`): each band of a
signature hashes, with a salt of its own, to one 64-bit key; all keys sit in a few sorted
uint64 runs with parallel int32 arrays of document numbers (12 bytes an entry), new keys in
a small dict buffer that becomes a run every 16k keys, a run merged into the one before it
once it holds a quarter as many keys (log-structured: a lookup is one `searchsorted` a run,
3 runs at 200k documents). Documents sharing a band share its key, so the candidates are
those of datasketch's index (a key collision can add one; the signature check drops it).

Memory: texts are never kept. Per kept document, at the defaults: the signature as uint32
(4 * num_perm bytes, 512) for checking candidates, the 23 band keys (276 bytes), and for the
exact index its digest's two halves, one a key and one a check (20 bytes): 808 bytes of
arrays. Measured as resident memory over 200k distinct documents (in the same run, on a
busy 2-core machine): ~0.91 KB a document, ~1.0 KB at the peak of a merge (which briefly holds
the merged runs twice), where datasketch's in-memory MinHashLSH with a dict of digests took
~9.1 KB (9 GB per million), and lookups plus inserts took 85 us a document against 101.
bench/data_pipeline.py's dedup of 192k generated documents (180k kept) ends with 145 MB of
arrays and peaks at 308 MB resident, interpreter and imports included. Arrays of a megabyte or
more get pages of their own (`_zeros`), so a replaced run goes back to the system at once.
The evaluation n-grams take 16 bytes each. With `clusters`, each kept document's location is
kept too, for the cluster report. Signatures and n-gram checks run in a process pool; the
index lives in this process.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import mmap
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from graft.data.corpus import CorpusDoc, StageStats, open_corpus
from graft.data.stages import default_workers, ordered_map
from graft.errors import ConfigError, DataError

__all__ = [
    "Cluster",
    "DedupConfig",
    "DedupStage",
    "EvalNgrams",
    "Features",
    "doc_features",
    "exact_key",
    "lsh_params",
    "minhash_signature",
    "read_eval_ngrams",
    "shingle_hashes",
]

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_CHAR_SHINGLE = 5  # characters a shingle of a document too short for word shingles
_MIN_EVAL_WORDS = 8  # shorter evaluation texts are too common to mean contamination
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: no information lost mod 2**64
_LOW32 = np.uint64(0xFFFFFFFF)
# Band tuning of the LSH: weigh missed pairs 4 times false candidates, as candidates are checked.
_LSH_WEIGHTS = (0.2, 0.8)


@dataclass(frozen=True)
class DedupConfig:
    """What `dedup` does: `exact` and `near` deduplication (see the module docstring for
    `threshold`, `shingle` and `num_perm`; `seed` picks MinHash's permutations), and
    decontamination against the `decontaminate` files (corpus .jsonl/.jsonl.zst or labelled
    .jsonl with the text in `decontam_field`, else a text file read whole) with n-grams of
    `decontam_n` words. `clusters` keeps locations for `DedupStage.clusters`. `workers`
    processes compute signatures (None: one a core; 1: this process), `chunksize` documents
    at a time."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.6
    shingle: int = 3
    num_perm: int = 128
    seed: int = 1
    decontaminate: tuple[Path, ...] = ()
    decontam_n: int = 13
    decontam_field: str = "text"
    clusters: bool = False
    workers: int | None = None
    chunksize: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(
                f"--threshold: expected a Jaccard similarity in (0, 1], got {self.threshold}"
            )
        if self.shingle < 1:
            raise ConfigError(f"--shingle: expected at least 1 word, got {self.shingle}")
        if self.num_perm < 16:
            raise ConfigError(f"--num-perm: expected at least 16, got {self.num_perm}")
        if self.decontam_n < _MIN_EVAL_WORDS:
            raise ConfigError(
                f"--decontam-n: expected at least {_MIN_EVAL_WORDS} words, got {self.decontam_n}"
            )
        if self.chunksize < 1:
            raise ConfigError("chunksize must be positive")


def exact_key(text: str) -> bytes:
    """The 16-byte digest two texts share when they are equal once normalised (NFC, lower
    case, runs of whitespace made one space, none at the ends)."""
    normal = _SPACE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).digest()


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def _word_ids(words: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each word, the same in every process (Python's hash() is not)."""
    cache: dict[str, bytes] = {}
    for word in words:
        if word not in cache:
            cache[word] = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return np.frombuffer(b"".join(cache[w] for w in words), dtype=np.uint64)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of each run of n ids (a polynomial in the ids; len(ids) - n + 1 of them)."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping mod 2**64 is the point
        hashes = ids[: len(ids) - n + 1].copy()
        for j in range(1, n):
            hashes = hashes * _MULTIPLIER + ids[j : len(ids) - n + 1 + j] + np.uint64(j)
    return hashes


def shingle_hashes(text: str, shingle: int) -> np.ndarray:
    """The distinct 32-bit hashes of `text`'s word shingles (character shingles when it has
    fewer than `shingle` words; none when it has no word)."""
    words = _words(text)
    if not words:
        return np.zeros(0, dtype=np.uint32)
    if len(words) >= shingle:
        hashes = _ngram_hashes(_word_ids(words), shingle)
    else:
        chars = " ".join(words)
        ids = np.array([ord(c) for c in chars], dtype=np.uint64)
        hashes = _ngram_hashes(ids, min(_CHAR_SHINGLE, len(chars)))
    folded = (hashes >> np.uint64(32)) ^ (hashes & _LOW32)
    return np.unique(folded.astype(np.uint32))


@functools.cache
def _template(num_perm: int, seed: int) -> Any:
    """An empty MinHash whose permutations every signature shares (built once a process).
    The shingles arrive hashed, so its hash function only turns them into Python ints."""
    from datasketch import MinHash  # type: ignore[import-untyped]

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int)


def minhash_signature(text: str, shingle: int, num_perm: int = 128, seed: int = 1) -> Any:
    """The MinHash hash values (a numpy array of num_perm values) of `text`'s shingles, or
    None when it has no word."""
    shingles = shingle_hashes(text, shingle)
    if not len(shingles):
        return None
    minhash = _template(num_perm, seed).copy()
    minhash.update_batch(shingles.tolist())
    return minhash.hashvalues


@dataclass(frozen=True)
class EvalNgrams:
    """The word n-grams of evaluation texts, as sorted 64-bit hashes with the index of the
    file each came from (`files`); `lengths` are the n-gram lengths present (n, and the
    lengths of shorter texts counted whole)."""

    files: tuple[str, ...] = ()
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    lengths: tuple[int, ...] = ()
    texts: int = 0

    def find(self, text: str) -> int | None:
        """The index (in `files`) of an evaluation file sharing an n-gram with `text`."""
        if not len(self.hashes):
            return None
        ids = _word_ids(_words(text))
        for length in self.lengths:
            grams = _ngram_hashes(ids, length)
            if not len(grams):
                continue
            at = np.searchsorted(self.hashes, grams).clip(max=len(self.hashes) - 1)
            hits = np.flatnonzero(self.hashes[at] == grams)
            if len(hits):
                return int(self.sources[at[hits[0]]])
        return None


def _eval_texts(path: Path, text_field: str) -> Iterator[str]:
    """The evaluation texts of one file: a .jsonl(.zst) line's `text_field`, or the whole file."""
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.zst")):
            with io.TextIOWrapper(open_corpus(path), encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
                    text = record.get(text_field) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise DataError(
                            f'{path}:{number}: expected an object with a "{text_field}" field '
                            "holding a string (--decontam-field names another)"
                        )
                    yield text
        else:
            yield path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read the evaluation file ({exc.strerror or exc})"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the evaluation file is not UTF-8 ({exc.reason})") from None


def read_eval_ngrams(paths: Sequence[Path], n: int = 13, text_field: str = "text") -> EvalNgrams:
    """The n-grams of the evaluation files `paths` (see DedupConfig), for `EvalNgrams.find`."""
    hashes: list[np.ndarray] = []
    sources: list[np.ndarray] = []
    lengths = {n}
    texts = 0
    for index, path in enumerate(paths):
        for text in _eval_texts(Path(path), text_field):
            words = _words(text)
            if len(words) < _MIN_EVAL_WORDS:
                continue
            texts += 1
            length = min(n, len(words))
            lengths.add(length)
            grams = np.unique(_ngram_hashes(_word_ids(words), length))
            hashes.append(grams)
            sources.append(np.full(len(grams), index, dtype=np.int32))
    if not texts:
        raise DataError(
            f"{', '.join(map(str, paths))}: no evaluation text of at least {_MIN_EVAL_WORDS} "
            "words to decontaminate against"
        )
    all_hashes = np.concatenate(hashes)
    order = np.argsort(all_hashes, kind="stable")
    return EvalNgrams(
        files=tuple(str(p) for p in paths),
        hashes=all_hashes[order],
        sources=np.concatenate(sources)[order],
        lengths=tuple(sorted(lengths, reverse=True)),
        texts=texts,
    )


class Features(NamedTuple):
    """What the index needs of one document: its exact digest, its MinHash values (None
    without near-deduplication or words), and the evaluation file it overlaps (or None)."""

    digest: bytes | None
    signature: Any
    contaminated: int | None


@dataclass(frozen=True)
class _Settings:
    config: DedupConfig
    evals: EvalNgrams


def doc_features(settings: _Settings, text: str) -> Features:
    """The features of one text: a pure function, run in the process pool."""
    config = settings.config
    contaminated = settings.evals.find(text)
    if contaminated is not None:  # dropped whatever else it is
        return Features(None, None, contaminated)
    digest = exact_key(text) if config.exact else None
    signature = (
        minhash_signature(text, config.shingle, config.num_perm, config.seed)
        if config.near
        else None
    )
    return Features(digest, signature, None)


def lsh_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = _LSH_WEIGHTS
) -> tuple[int, int]:
    """The (bands, rows) of an LSH index over `num_perm` MinHash values that minimise
    weights[0] * (false positive area) + weights[1] * (false negative area) under the
    S-curve 1 - (1 - s**rows)**bands, split at `threshold` (datasketch's MinHashLSH choice;
    (23, 5) at the defaults). The areas are integrated exactly: the curve is a polynomial of
    degree at most num_perm, so Gauss-Legendre with num_perm // 2 + 1 nodes is exact."""
    nodes, node_weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], dtype=np.float64)[:, None]
    rows = np.array([r for _, r in pairs], dtype=np.float64)[:, None]

    def area(low: float, high: float) -> np.ndarray:  # of the S-curve over [low, high]
        s = (high - low) / 2 * nodes + (high + low) / 2
        curve = 1.0 - (1.0 - s**rows) ** bands
        return (high - low) / 2 * (curve * node_weights).sum(axis=1)

    false_positive = area(0.0, threshold)
    false_negative = (1.0 - threshold) - area(threshold, 1.0)
    error = weights[0] * false_positive + weights[1] * false_negative
    return pairs[int(np.argmin(error))]


_OWN_PAGES = 1 << 20  # bytes from which an index array gets memory pages of its own


def _zeros(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A zeroed array; from _OWN_PAGES bytes on, in an anonymous memory map of its own, so
    its pages become resident only once written and go back to the system as soon as it is
    freed. Through malloc they might not: glibc raises its mmap threshold (up to 32 MB) each
    time a large block is freed, so the index's replaced runs and rows would be carved from,
    and freed into, a heap that cannot shrink past the live blocks after them (measured: RSS
    at ~1.8 times the index's size)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < _OWN_PAGES:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


class _Rows:
    """Fixed-shape rows of one growing numpy array, numbered from 0 in the order added. The
    capacity doubles when full; the unused part is pages not yet written, which cost address
    space, not memory."""

    def __init__(self, shape: tuple[int, ...], dtype: type[np.generic]) -> None:
        self.array: np.ndarray = _zeros((1024, *shape), dtype)
        self.count = 0

    def add(self, row: Any) -> int:
        if self.count == len(self.array):
            grown = _zeros((2 * len(self.array), *self.array.shape[1:]), self.array.dtype.type)
            grown[: self.count] = self.array[: self.count]
            self.array = grown
        self.array[self.count] = row
        self.count += 1
        return self.count - 1

    @property
    def nbytes(self) -> int:
        return self.count * self.array[:1].nbytes


# The band index's write buffer: this many keys go to a dict before becoming a sorted run.
_BUFFER_KEYS = 1 << 14
# A sorted run is merged into the one before it once it holds at least 1/_RUN_RATIO as many
# keys: run sizes fall by that factor at least, so a lookup searches log_RATIO(n) runs.
_RUN_RATIO = 4


class _KeyIndex:
    """A compact multimap from 64-bit keys to document numbers (int32): 12 bytes an entry.

    Entries go first to a small dict buffer, which becomes a sorted run (a uint64 key array
    with a parallel int32 array) every _BUFFER_KEYS entries; a run as large as a fraction of
    the run before it is merged into it (log-structured, so each entry is copied O(log n)
    times in all and a lookup searches a few runs). A lookup is one vectorised searchsorted
    a run. Within a key, document numbers stay in the order added."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # largest (oldest) first
        self.buffer: dict[int, list[int]] = {}
        self.buffered = 0

    def __len__(self) -> int:
        return self.buffered + sum(len(keys) for keys, _ in self.runs)

    @property
    def nbytes(self) -> int:
        """The sorted runs' bytes (the buffer, at most _BUFFER_KEYS entries, aside)."""
        return sum(keys.nbytes + values.nbytes for keys, values in self.runs)

    def add(self, keys: Iterable[int], value: int) -> None:
        for key in keys:
            self.buffer.setdefault(key, []).append(value)
            self.buffered += 1
        if self.buffered >= _BUFFER_KEYS:
            self.flush()

    def find(self, keys: np.ndarray) -> list[int]:
        """The values of every entry whose key is among `keys` (uint64), with repeats."""
        found: list[int] = []
        for key in keys.tolist():
            found.extend(self.buffer.get(key, ()))
        for run_keys, run_values in self.runs:
            at = np.searchsorted(run_keys, keys)
            np.minimum(at, len(run_keys) - 1, out=at)
            hit = run_keys[at] == keys
            if not hit.any():  # the common case: a key is in one run at most
                continue
            for start, key in zip(at[hit].tolist(), keys[hit], strict=True):
                stop = int(np.searchsorted(run_keys, key, side="right"))
                found.extend(run_values[start:stop].tolist())
        return found

    def flush(self) -> None:
        """Turn the buffer into a sorted run, merging runs as their sizes call for."""
        if not self.buffered:
            return
        keys = np.fromiter(
            (key for key, values in self.buffer.items() for _ in values),
            dtype=np.uint64,
            count=self.buffered,
        )
        values = np.fromiter(
            (value for values in self.buffer.values() for value in values),
            dtype=np.int32,
            count=self.buffered,
        )
        self.buffer, self.buffered = {}, 0
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], values[order]))
        del keys, values, order
        while len(self.runs) > 1 and _RUN_RATIO * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            newer = self.runs.pop()
            self.runs[-1] = _merge(self.runs[-1], newer)
            del newer


def _merge(
    old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one; of equal keys, the older run's entries (the earlier
    documents) first."""
    (old_keys, old_values), (new_keys, new_values) = old, new
    size = len(old_keys) + len(new_keys)
    at = np.searchsorted(old_keys, new_keys, side="right")
    at += np.arange(len(new_keys))  # where the new entries go in the merged run
    from_old = np.ones(size, dtype=bool)
    from_old[at] = False
    keys, values = _zeros((size,), np.uint64), _zeros((size,), np.int32)
    keys[at], values[at] = new_keys, new_values
    keys[from_old], values[from_old] = old_keys, old_values
    return keys, values


@functools.cache
def _band_hash(bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The constants of _band_keys: a random odd 64-bit multiplier a row, a salt a band."""
    rng = np.random.default_rng(0x5EED)
    multipliers = rng.integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return multipliers, rng.integers(0, 2**63, size=bands, dtype=np.uint64)


def _band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key for each LSH band of a signature: its band's salt plus the sum of its
    rows' values times the rows' multipliers, mod 2**64 (a multiply-add hash). Documents whose
    band rows are all equal share that band's key; a collision only adds a candidate, which
    the signature check then rejects."""
    multipliers, salts = _band_hash(bands, rows)
    values = signature[: bands * rows].astype(np.uint64).reshape(bands, rows)
    with np.errstate(over="ignore"):  # wrapping mod 2**64 is the point
        return (values * multipliers).sum(axis=1, dtype=np.uint64) + salts


class _NearIndex:
    """The near-duplicate index: the kept documents' signatures (uint32 rows, for checking
    candidates) and their LSH band keys in a _KeyIndex."""

    def __init__(self, config: DedupConfig) -> None:
        self.bands, self.rows = lsh_params(config.threshold, config.num_perm)
        self.threshold = config.threshold
        self.signatures = _Rows((config.num_perm,), np.uint32)
        self.keys = _KeyIndex()

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        return _band_keys(signature, self.bands, self.rows)

    def match(self, signature: np.ndarray, keys: np.ndarray) -> tuple[int, float] | None:
        """The earlier kept document most similar to `signature` (its band `keys`; the first
        of equals), if its estimated Jaccard similarity reaches the threshold: (number,
        similarity)."""
        found = self.keys.find(keys)
        if not found:
            return None
        candidates = np.unique(np.asarray(found, dtype=np.int64))
        similar = (self.signatures.array[candidates] == signature).mean(axis=1)
        best = int(similar.argmax())
        if similar[best] < self.threshold:
            return None
        return int(candidates[best]), float(similar[best])

    def add(self, signature: np.ndarray, keys: np.ndarray | None) -> None:
        """Add the next kept document: its signature and band `keys`. Every kept document gets
        a row, so rows match numbers; one with no words gets a filler signature and no keys,
        so nothing matches it."""
        number = self.signatures.add(signature)
        if keys is not None:
            self.keys.add(keys.tolist(), number)

    @property
    def nbytes(self) -> int:
        return self.signatures.nbytes + self.keys.nbytes


class _ExactIndex:
    """The exact index: each kept document's digest split in two 64-bit halves, the first a
    key in a _KeyIndex and the second a row (by document number) confirming a match."""

    def __init__(self) -> None:
        self.keys = _KeyIndex()
        self.checks = _Rows((), np.uint64)

    @staticmethod
    def _halves(digest: bytes) -> tuple[int, int]:
        return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")

    def match(self, digest: bytes) -> int | None:
        """The number of the kept document with this digest, if any."""
        key, check = self._halves(digest)
        for number in self.keys.find(np.array([key], dtype=np.uint64)):
            if int(self.checks.array[number]) == check:
                return number
        return None

    def add(self, digest: bytes) -> int:
        key, check = self._halves(digest)
        number = self.checks.add(check)
        self.keys.add((key,), number)
        return number

    @property
    def nbytes(self) -> int:
        return self.checks.nbytes + self.keys.nbytes


@dataclass
class Cluster:
    """A kept document and the documents dropped as its duplicates: (location, "exact" or
    "near", estimated Jaccard similarity)."""

    kept: str
    dropped: list[tuple[str, str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kept": self.kept,
                "size": 1 + len(self.dropped),
                "dropped": [
                    {"location": where, "kind": kind, "similarity": round(similarity, 4)}
                    for where, kind, similarity in self.dropped
                ],
            },
            ensure_ascii=False,
        )


def _text(doc: CorpusDoc) -> str:
    return doc.text


class DedupStage:
    """The `dedup` step: `DedupStage(config)(docs)` yields the documents that are neither
    contaminated nor a duplicate of an earlier one; `stats` counts the others by reason, and
    the clusters found (`notes["clusters"]`) and the size of the index's arrays at the end
    (`notes["index_mb"]`). With `config.clusters`, `clusters` lists every
    group of duplicates, by kept document, once the stream is read."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.stats = StageStats("dedup")
        self.clusters: list[Cluster] = []

    def __call__(self, docs: Iterable[CorpusDoc]) -> Iterator[CorpusDoc]:
        config, stats = self.config, self.stats
        start = time.perf_counter()
        evals = (
            read_eval_ngrams(config.decontaminate, config.decontam_n, config.decontam_field)
            if config.decontaminate
            else EvalNgrams()
        )
        near = _NearIndex(config) if config.near else None
        if near is not None:
            stats.notes["lsh"] = {"bands": near.bands, "rows": near.rows}
        no_signature = np.asarray(_template(config.num_perm, config.seed).hashvalues, np.uint32)
        exact = _ExactIndex() if config.exact else None
        locations: list[str] = []  # by kept document number, with config.clusters only
        dropped_by: Counter[int] = Counter()  # kept document number -> duplicates dropped
        members: dict[int, list[tuple[str, str, float]]] = {}
        contaminated_by: Counter[str] = Counter()
        workers = default_workers(config.workers)

        def drop(reason: str, doc: CorpusDoc, into: int | None, similarity: float) -> None:
            stats.rejected[reason] += 1
            if into is not None:
                dropped_by[into] += 1
                if config.clusters:
                    kind = "exact" if reason == "exact duplicate" else "near"
                    members.setdefault(into, []).append((doc.location, kind, similarity))

        try:
            results = ordered_map(
                doc_features,
                _Settings(config, evals),
                docs,
                _text,
                workers=workers,
                chunksize=config.chunksize,
            )
            for doc, features in results:
                stats.docs_in += 1
                size = len(doc.text.encode("utf-8"))
                stats.bytes_in += size
                if features.contaminated is not None:
                    contaminated_by[evals.files[features.contaminated]] += 1
                    drop("contaminated", doc, None, 0.0)
                    continue
                if exact is not None and features.digest is not None:
                    same = exact.match(features.digest)
                    if same is not None:
                        drop("exact duplicate", doc, same, 1.0)
                        continue
                signature = features.signature
                keys = None
                if near is not None and signature is not None:
                    signature = np.asarray(signature, dtype=np.uint32)
                    keys = near.band_keys(signature)
                    match = near.match(signature, keys)
                    if match is not None:
                        drop("near duplicate", doc, *match)
                        continue
                # Kept: index it (every kept document gets a row in each index, so its row
                # number is its number among the kept ones, as in `locations`).
                if exact is not None:
                    assert features.digest is not None  # only contaminated ones have none
                    exact.add(features.digest)
                if config.clusters:
                    locations.append(doc.location)
                if near is not None:
                    near.add(signature if keys is not None else no_signature, keys)
                stats.docs_out += 1
                stats.bytes_out += size
                yield doc
        finally:
            stats.seconds += time.perf_counter() - start
            sizes = Counter(1 + n for n in dropped_by.values())
            stats.notes["clusters"] = {
                "count": len(dropped_by),
                "largest": max(sizes, default=0),
                "sizes": {str(size): n for size, n in sorted(sizes.items())},
            }
            stats.notes["workers"] = workers
            index_bytes = sum(i.nbytes for i in (exact, near) if i is not None)
            stats.notes["index_mb"] = round(index_bytes / 1e6, 3)
            if config.decontaminate:
                stats.notes["contaminated_by"] = {f: contaminated_by[f] for f in evals.files}
                stats.notes["eval_texts"] = evals.texts
                stats.notes["eval_ngrams"] = len(evals.hashes)
            if config.clusters:
                self.clusters = [
                    Cluster(locations[number], members[number]) for number in sorted(members)
                ]
