"""`graft data report`: what a collected corpus holds, as a markdown page and a length histogram.

The corpus is read once, one document at a time, into counters whose size does not grow with the
number of documents (a fixed-bin length histogram, a reservoir sample of lengths for the
quantiles), plus one counter entry per language, source, host or folder and licence, and the
sha256 of every distinct text for the duplicate count. The page says:

- documents, characters, words (whitespace-separated) and UTF-8 bytes;
- document lengths in characters: a histogram (PNG beside the page) with the median, p10 and
  p90 (exact up to `SAMPLE` documents, else from a uniform sample of that many);
- the language mix (`lang`, "unknown" where language identification did not run or gave none);
- the top sources: by kind (`source`) and by host (a URL's) or folder (a path's) of `location`;
- the licence mix ("none stated" where a source states none);
- duplicate texts: documents whose text has the sha256 of an earlier document's;
- when DOCS + STATS_SUFFIX exists and was written for DOCS as it is (graft.data.stages.read_stats),
  the pipeline steps that made the corpus (documents and MB in and out, seconds, MB/s) and the
  documents each dropped, by reason; one written for another version of DOCS is named, not read.

Both files are written atomically.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from graft.atomic_files import write_atomic
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, Problems, read_corpus
from graft.errors import ConfigError

__all__ = ["BINS_PER_OCTAVE", "SAMPLE", "CorpusProfile", "quantile", "write_report"]

#: Lengths kept for the quantiles: every one up to this many documents, then a uniform sample.
SAMPLE = 100_000
#: Histogram bins per doubling of length; bin 0 holds empty documents.
BINS_PER_OCTAVE = 4
_OCTAVES = 40  # up to 2**40 characters: no document is longer
_TOP = 20  # rows of the long tables (hosts and folders)


def quantile(sorted_values: Sequence[int], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly between the two nearest ranks (as
    numpy.percentile does by default)."""
    if not sorted_values:
        return 0.0
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _bin(length: int) -> int:
    if length <= 0:
        return 0
    return 1 + min(int(math.log2(length) * BINS_PER_OCTAVE), _OCTAVES * BINS_PER_OCTAVE - 1)


def _bin_start(index: int) -> float:
    """The smallest length bin `index` (>= 1) holds."""
    return 2 ** ((index - 1) / BINS_PER_OCTAVE)


def _origin(location: str) -> str:
    """The host of a URL, else the folder of a path (without a `:LINE` or `#ROW` suffix)."""
    parts = urlsplit(location)
    if parts.scheme in ("http", "https", "ftp") and parts.netloc:
        return parts.netloc.lower()
    path = location.split("#", 1)[0]
    head, colon, tail = path.rpartition(":")
    if colon and tail.isdigit():
        path = head
    folder = str(Path(path).parent)
    return folder if folder != "." else "(current folder)"


@dataclass
class CorpusProfile:
    """The running figures of a corpus; `add` one document at a time."""

    seed: int = 0
    documents: int = 0
    characters: int = 0
    words: int = 0
    text_bytes: int = 0  # UTF-8
    empty: int = 0
    duplicates: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (1 + _OCTAVES * BINS_PER_OCTAVE))
    sample: list[int] = field(default_factory=list)
    langs: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    licences: Counter[str] = field(default_factory=Counter)
    _digests: set[bytes] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, doc: CorpusDoc) -> None:
        import hashlib

        text = doc.text
        length = len(text)
        self.documents += 1
        self.characters += length
        self.words += len(text.split())
        data = text.encode("utf-8")
        self.text_bytes += len(data)
        self.empty += not text.strip()
        self.histogram[_bin(length)] += 1
        # Reservoir sampling (Algorithm R): every length seen so far is in the sample with
        # probability SAMPLE / documents.
        if len(self.sample) < SAMPLE:
            self.sample.append(length)
        else:
            slot = self._rng.randrange(self.documents)
            if slot < SAMPLE:
                self.sample[slot] = length
        self.langs[doc.lang or "unknown"] += 1
        self.kinds[doc.source] += 1
        self.origins[_origin(doc.location)] += 1
        self.licences[doc.licence or "none stated"] += 1
        digest = hashlib.sha256(data).digest()
        if digest in self._digests:
            self.duplicates += 1
        else:
            self._digests.add(digest)

    def quantiles(self) -> dict[str, float]:
        ordered = sorted(self.sample)
        return {
            name: quantile(ordered, q) for name, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))
        }

    @property
    def exact(self) -> bool:
        """Whether the quantiles are exact (every length is in the sample)."""
        return self.documents <= SAMPLE


def _share(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "-"


def _counter_table(
    title: str, counts: Counter[str], total: int, top: int | None = None
) -> list[str]:
    rows = counts.most_common(top)
    lines = [f"| {title} | documents | share |", "|---|---:|---:|"]
    lines += [f"| {_cell(name)} | {n:,} | {_share(n, total)} |" for name, n in rows]
    if top is not None and len(counts) > top:
        rest = total - sum(n for _, n in rows)
        lines.append(f"| ({len(counts) - top:,} more) | {rest:,} | {_share(rest, total)} |")
    return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _step_lines(steps: Sequence[dict[str, Any]], source: str) -> list[str]:
    lines = [
        "## Pipeline steps",
        "",
        f"From `{source}`, in the order the steps ran.",
        "",
        "| stage | docs in | docs out | MB in | MB out | seconds | MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rejections: list[str] = []
    notes: list[str] = []
    for step in steps:
        stage = _cell(str(step.get("stage", "?")))
        docs_in, docs_out = int(step.get("docs_in", 0)), int(step.get("docs_out", 0))
        mb_in, mb_out = float(step.get("bytes_in", 0)) / 1e6, float(step.get("bytes_out", 0)) / 1e6
        seconds = float(step.get("seconds", 0.0))
        speed = f"{mb_in / seconds:.2f}" if seconds > 0 else "-"
        lines.append(
            f"| {stage} | {docs_in:,} | {docs_out:,} | {mb_in:.2f} | {mb_out:.2f} | "
            f"{seconds:.1f} | {speed} |"
        )
        rejected = step.get("rejected") or {}
        for reason, n in sorted(rejected.items(), key=lambda item: -int(item[1])):
            rejections.append(
                f"| {stage} | {_cell(reason)} | {int(n):,} | {_share(int(n), docs_in)} |"
            )
        if step.get("notes"):
            figures = ", ".join(f"{k}: {v}" for k, v in step["notes"].items())
            notes.append(f"- {stage}: {_cell(figures)}")
    lines += ["", "### Rejections", ""]
    if rejections:
        lines += ["| stage | reason | documents | share of its input |", "|---|---|---:|---:|"]
        lines += rejections
    else:
        lines.append("No step dropped a document.")
    if notes:
        lines += ["", "### Notes", "", *notes]
    return lines


def _plot(profile: CorpusProfile, figures: dict[str, float], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    used = [i for i, n in enumerate(profile.histogram) if n and i > 0]
    if used:
        lo, hi = used[0], used[-1]
        edges = [_bin_start(i) for i in range(lo, hi + 2)]
        counts = profile.histogram[lo : hi + 1]
        widths = [b - a for a, b in zip(edges, edges[1:])]
        ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4878a8", edgecolor="white")
        ax.set_xscale("log")
        for name, style in (("p10", ":"), ("median", "-"), ("p90", "--")):
            value = max(figures[name], 1.0)
            ax.axvline(
                value, color="#c44e52", linestyle=style, label=f"{name} {figures[name]:,.0f}"
            )
        ax.legend(fontsize=8)
    ax.set_xlabel("document length (characters, log scale)")
    ax.set_ylabel("documents")
    empty = f"; {profile.histogram[0]:,} empty" if profile.histogram[0] else ""
    ax.set_title(f"{profile.documents:,} documents{empty}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def default_report_path(docs: Sequence[Path]) -> Path:
    """DOCS + ".report.md" (the first DOCS when there are several)."""
    if not docs:
        raise ConfigError("give at least one corpus file")
    if str(docs[0]) == "-":
        raise ConfigError("a corpus read from stdin has no default report path; give --out")
    return Path(f"{docs[0]}.report.md")


def profile_corpus(docs: Iterable[Path], problems: Problems | None = None) -> CorpusProfile:
    profile = CorpusProfile()
    for path in docs:
        for doc in read_corpus(Path(path), problems):
            profile.add(doc)
    return profile


def write_report(
    docs: Sequence[Path], out: Path | None = None, problems: Problems | None = None
) -> tuple[Path, CorpusProfile]:
    """Profile the corpora `docs` (read once, in order) and write the markdown page to `out`
    (default DOCS + ".report.md") with the length histogram beside it (the page's name with
    `.lengths.png` for `.md`). Returns (the page's path, the figures)."""
    from graft.data.stages import read_stats

    out = Path(out) if out is not None else default_report_path(docs)
    problems = problems if problems is not None else Problems()
    profile = profile_corpus(docs, problems)
    figures = profile.quantiles()
    name = out.name.removesuffix(".md")
    png = _plot(profile, figures, out.with_name(f"{name}.lengths.png"))
    n = profile.documents
    how = (
        "exact" if profile.exact else f"from a uniform sample of {len(profile.sample):,} documents"
    )
    lines = [
        f"# Corpus report: {', '.join(f'`{p}`' for p in docs)}",
        "",
        "| | |",
        "|---|---:|",
        f"| documents | {n:,} |",
        f"| characters | {profile.characters:,} |",
        f"| words | {profile.words:,} |",
        f"| bytes | {profile.text_bytes:,} |",
        f"| duplicate texts | {profile.duplicates:,} ({_share(profile.duplicates, n)}) |",
        f"| empty documents | {profile.empty:,} |",
    ]
    if problems:
        lines.append(f"| lines skipped | {sum(problems.counts.values()):,} |")
    lines += [
        "",
        "Words are whitespace-separated; bytes are UTF-8. A duplicate text has the sha256 of an "
        "earlier document's text.",
        "",
        "## Lengths",
        "",
        f"![document lengths]({png.name})",
        "",
        f"Characters per document: median {figures['median']:,.1f}, p10 {figures['p10']:,.1f}, "
        f"p90 {figures['p90']:,.1f} ({how}).",
        "",
        "## Languages",
        "",
        *_counter_table("language", profile.langs, n),
        "",
        "## Sources",
        "",
        *_counter_table("kind", profile.kinds, n),
        "",
        *_counter_table("host or folder", profile.origins, n, top=_TOP),
        "",
        "## Licences",
        "",
        *_counter_table("licence", profile.licences, n),
    ]
    stale: list[Path] = []
    steps = read_stats(docs, stale)
    if steps:
        stats_files = [Path(f"{p}{STATS_SUFFIX}") for p in docs if str(p) != "-"]
        shown = ", ".join(str(p) for p in stats_files if p.exists() and p not in stale)
        lines += ["", *_step_lines(steps, shown)]
    for path in stale:
        lines += [
            "",
            f"`{path}` is not read: it was written for another version of its corpus (a step "
            "stopped before rewriting it, or the corpus was replaced since).",
        ]
    write_atomic(out, "\n".join(lines) + "\n")
    return out, profile
