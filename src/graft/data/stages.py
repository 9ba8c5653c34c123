"""What the corpus steps `clean`, `dedup` and `redact` share: an ordered process pool with
bounded memory, their statistics files, and their one-line summaries.

A step is a callable turning an iterable of `CorpusDoc`s into an iterator of them, filling a
`StageStats` as documents pass; steps chain as generators, so a pipeline holds a few chunks of
documents at a time whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from graft.atomic_files import write_atomic
from graft.data.corpus import (
    STATS_SUFFIX,
    CorpusDoc,
    CorpusWriter,
    Problems,
    StageStats,
    check_corpus_output,
    read_corpus,
)
from graft.errors import DataError

__all__ = [
    "Stage",
    "ordered_map",
    "read_stats",
    "run_stage",
    "stats_record",
    "summary_line",
    "write_stats",
]

T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")
S = TypeVar("S")


class Stage(Protocol):
    """A corpus step: documents in, documents out, its statistics filled as they pass."""

    stats: StageStats

    def __call__(self, docs: Iterable[CorpusDoc]) -> Iterator[CorpusDoc]: ...


# The settings of the pool's job in a worker process, set once by the pool's initializer (a
# worker serves one pool, so one job), rather than pickled with every chunk.
_worker_settings: Any = None


def _init_worker(settings: Any) -> None:
    global _worker_settings
    _worker_settings = settings


def _run_chunk(fn: Callable[[Any, Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(_worker_settings, item) for item in chunk]


def ordered_map(
    fn: Callable[[S, K], R],
    settings: S,
    items: Iterable[T],
    key: Callable[[T], K],
    *,
    workers: int,
    chunksize: int = 64,
) -> Iterator[tuple[T, R]]:
    """(item, fn(settings, key(item))) for every item, in order. `fn` must be a module-level
    (picklable) pure function: with `workers` > 1 it runs in a process pool, the input sent
    in chunks of `chunksize`, only key(item) travelling to a worker while the item waits here.

    Like Pool.imap(chunksize=...), but with at most 2 chunks a worker in flight: imap's feeder
    thread reads its whole input ahead, which for a corpus means the corpus in memory. Workers
    start with "spawn" (a forked child would inherit any thread the caller holds half-locked),
    and a worker that dies makes a BrokenProcessPool error here, where multiprocessing.Pool
    would wait for it forever. An input of less than a chunk a worker runs in this process:
    starting the workers (each imports its modules anew) would take longer than the work."""
    stream = iter(items)
    head = list(itertools.islice(stream, chunksize * workers)) if workers > 1 else []
    if workers <= 1 or len(head) < chunksize * workers:
        for item in itertools.chain(head, stream):
            yield item, fn(settings, key(item))
        return
    items = itertools.chain(head, stream)
    context = multiprocessing.get_context("spawn")
    pending: deque[tuple[list[T], Future[list[R]]]] = deque()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(settings,)
    ) as pool:
        try:
            chunk: list[T] = []
            for item in items:
                chunk.append(item)
                if len(chunk) == chunksize:
                    keys = [key(x) for x in chunk]
                    pending.append((chunk, pool.submit(_run_chunk, fn, keys)))
                    chunk = []
                    while len(pending) >= 2 * workers or (pending and pending[0][1].done()):
                        done, result = pending.popleft()
                        yield from zip(done, result.result(), strict=True)
            if chunk:
                pending.append((chunk, pool.submit(_run_chunk, fn, [key(x) for x in chunk])))
            while pending:
                done, result = pending.popleft()
                yield from zip(done, result.result(), strict=True)
        finally:
            # An early stop (an error, a consumer that stops reading) drops the queued work.
            for _, result in pending:
                result.cancel()


def default_workers(workers: int | None) -> int:
    """`workers`, or every core when None or 0."""
    return workers if workers else os.cpu_count() or 1


def stats_record(stats: StageStats) -> dict[str, Any]:
    """A StageStats as a JSON-ready dict (the form stats files hold)."""
    # Not dataclasses.asdict: it rebuilds a Counter from its items, counting the pairs.
    record = {f.name: getattr(stats, f.name) for f in fields(stats)}
    record["rejected"] = dict(stats.rejected.most_common())
    record["seconds"] = round(stats.seconds, 3)
    return record


def stats_path(corpus: Path | str) -> Path:
    return Path(f"{corpus}{STATS_SUFFIX}")


def file_fingerprint(path: Path) -> dict[str, Any]:
    """What a statistics file says of the corpus file it was written for: its size in bytes and
    its sha256."""
    with Path(path).open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": size, "sha256": digest}


def _describes(entries: list[dict[str, Any]], corpus: Path) -> bool:
    """Whether statistics `entries` were written for `corpus` as it is now: the last step's
    `output_file` names its size and sha256. A corpus replaced since (a later run stopped
    between its two writes, `--out - > FILE`, a copy) does not match. Files written before
    statistics named their corpus have no `output_file`; they are taken at their word."""
    named = entries[-1].get("output_file") if entries else None
    if named is None:
        return True
    try:
        # The size first: a corpus that changed length needs no hashing to tell.
        return (
            isinstance(named, dict)
            and named.get("size") == corpus.stat().st_size
            and named == file_fingerprint(corpus)
        )
    except OSError:
        return False


def read_stats(
    inputs: Iterable[Path | str], stale: list[Path] | None = None
) -> list[dict[str, Any]]:
    """The entries of the statistics files beside `inputs` (those that have one; stdin has
    none), in input order: the steps that made the inputs. A statistics file written for
    another version of its corpus is not read (it is appended to `stale`, when given)."""
    entries: list[dict[str, Any]] = []
    for corpus in inputs:
        if str(corpus) == "-":
            continue
        path = stats_path(corpus)
        if not path.exists():
            continue
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the statistics file ({exc})") from exc
        if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
            raise DataError(f"{path}: expected a JSON list of step statistics")
        if _describes(loaded, Path(corpus)):
            entries.extend(loaded)
        elif stale is not None:
            stale.append(path)
    return entries


def write_stats(out: Path | str, earlier: Sequence[dict[str, Any]], stats: StageStats) -> Path:
    """Write `out` + STATS_SUFFIX: `earlier` (the inputs' statistics, from read_stats), then
    this step's, naming the corpus file `out` it wrote (written first: see _describes)."""
    entries = [*earlier, {**stats_record(stats), "output_file": file_fingerprint(Path(out))}]
    return write_atomic(stats_path(out), json.dumps(entries, indent=1, ensure_ascii=False) + "\n")


def summary_line(stats: StageStats, top: int = 4) -> str:
    """One line: documents in and out, speed, the most frequent reasons for dropping."""
    kept = f" ({stats.docs_out / stats.docs_in:.1%})" if stats.docs_in else ""
    line = (
        f"{stats.stage}: {stats.docs_in:,} docs in, {stats.docs_out:,} out{kept}, "
        f"{stats.bytes_in / 1e6:.1f} MB in {stats.seconds:.1f} s ({stats.mb_per_s():.1f} MB/s)"
    )
    if stats.rejected:
        reasons = ", ".join(f"{n:,} {why}" for why, n in stats.rejected.most_common(top))
        more = len(stats.rejected) - top
        line += f"; dropped: {reasons}" + (f" and {more} more reasons" if more > 0 else "")
    return line


def _progress_bar(docs: Iterable[CorpusDoc], desc: str) -> Iterator[CorpusDoc]:
    """`docs` under a progress bar on stderr that starts at the first document, so that stdin
    refused at its first line (not a corpus) leaves the error alone on the terminal."""
    from tqdm import tqdm

    docs = iter(docs)
    first = next(docs, None)
    if first is not None:
        chained = itertools.chain([first], docs)
        yield from tqdm(chained, desc=desc, unit=" docs", file=sys.stderr, dynamic_ncols=True)


def run_stage(
    stage: Stage,
    inputs: Sequence[Path],
    out: Path,
    *,
    problems: Problems | None = None,
    progress: bool = False,
) -> StageStats:
    """Read the corpus files `inputs` (`-`: stdin) through `stage` into `out` (`-`: stdout;
    otherwise written atomically, then `out` + STATS_SUFFIX: the inputs' statistics and this
    step's, naming `out`'s size and sha256, so that statistics a stop between the two writes
    leaves from an earlier run are not read as `out`'s). Bad input lines go to `problems`
    (fatal without one) and into the step's notes."""
    check_corpus_output(out)
    if sum(str(p) == "-" for p in inputs) > 1:
        raise DataError("stdin (-) can be read once: give it as one input only")
    # Read before the work: a step writing over its own input (`--out IN`) still finds the
    # input's history, and a damaged statistics file is refused before any output is written.
    earlier = read_stats(inputs)
    # A file that is not a corpus (a text file given by mistake) is refused now, before any
    # work: read_corpus checks the first line. stdin cannot be read twice; the bar below waits.
    for path in inputs:
        if str(path) != "-":
            with contextlib.closing(read_corpus(path, Problems())) as start:
                next(start, None)
    problems = problems if problems is not None else Problems(strict=True)
    docs: Iterable[CorpusDoc] = (doc for path in inputs for doc in read_corpus(path, problems))
    if progress:
        docs = _progress_bar(docs, stage.stats.stage)
    with CorpusWriter(out) as writer:
        for doc in stage(docs):
            writer.write(doc)
    if problems:
        stage.stats.notes["problems"] = dict(problems.counts)
    if str(out) != "-":
        write_stats(out, earlier, stage.stats)
    return stage.stats
