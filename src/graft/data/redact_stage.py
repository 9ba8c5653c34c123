"""Redaction as a corpus step: graft.data.redact applied to a stream of `CorpusDoc`s.

`RedactStage(config)(docs)` yields every document with the configured kinds of sensitive
text masked or replaced by consistent fakes (see graft.data.redact for what is found and
what replaces it); `stats.notes["redactions"]` counts the replacements by kind. Documents are
redacted in a process pool, each worker with its own Redactor: a pseudonym depends only on
the seed and the original, so every worker writes the same fake for the same original.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace

from graft.data.corpus import CorpusDoc, StageStats
from graft.data.redact import RedactConfig, Redactor
from graft.data.stages import default_workers, ordered_map

__all__ = ["RedactStage", "redact_text"]


@functools.cache
def _redactor(config: RedactConfig) -> Redactor:
    return Redactor(config)  # compiled once a process (a names list makes a large pattern)


def redact_text(config: RedactConfig, text: str) -> tuple[str, dict[str, int]]:
    """`text` redacted, and the replacements made by kind: a pure function of its arguments
    (the cached Redactor only counts), so a process pool can run it."""
    redactor = _redactor(config)
    before = dict(redactor.report.counts)
    redacted = redactor.redact(text)
    counts = {k: n - before.get(k, 0) for k, n in redactor.report.counts.items()}
    return redacted, {k: n for k, n in counts.items() if n}


def _text(doc: CorpusDoc) -> str:
    return doc.text


class RedactStage:
    """The `redact` step: every document out, redacted; `stats.notes` holds the replacements
    by kind (`redactions`) and the number of documents changed. `workers` processes (None:
    one a core; 1: this process) redact `chunksize` documents at a time."""

    def __init__(
        self, config: RedactConfig, *, workers: int | None = None, chunksize: int = 64
    ) -> None:
        self.config = config
        self.workers = workers
        self.chunksize = chunksize
        self.stats = StageStats("redact")

    def __call__(self, docs: Iterable[CorpusDoc]) -> Iterator[CorpusDoc]:
        stats = self.stats
        counts: Counter[str] = Counter({kind: 0 for kind in self.config.kinds})
        changed = 0
        workers = default_workers(self.workers)
        start = time.perf_counter()
        try:
            results = ordered_map(
                redact_text, self.config, docs, _text, workers=workers, chunksize=self.chunksize
            )
            for doc, (text, found) in results:
                stats.docs_in += 1
                stats.bytes_in += len(doc.text.encode("utf-8"))
                counts.update(found)
                changed += bool(found)
                out = replace(doc, text=text) if found else doc
                stats.docs_out += 1
                stats.bytes_out += len(out.text.encode("utf-8"))
                yield out
        finally:
            stats.seconds += time.perf_counter() - start
            stats.notes.update(
                mode=self.config.mode,
                redactions=dict(counts),
                docs_changed=changed,
                workers=workers,
            )
